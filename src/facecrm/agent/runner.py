"""`facecrm agent`: cameras → faces → tracks → one decision per track → visit events.

Privacy by construction: the agent decides known/unknown itself, against the
templates of opted-in customers it syncs from the server. A track that is not
an opted-in customer only increments a counter; its chips are dropped and
nothing about it is written, logged or sent. No frame or crop leaves the
agent. Known customers become visit events with an idempotency key, written
to a durable outbox and delivered in order when the server is reachable.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import httpx
import numpy as np

from facecrm import __version__
from facecrm.agent.queue import Outbox
from facecrm.agent.tracker import Track, Tracker
from facecrm.config import API_PREFIX
from facecrm.gallery.gallery import Gallery
from facecrm.metrics import Registry
from facecrm.vision.embed import normalize
from facecrm.vision.pipeline import FacePipeline

log = logging.getLogger("facecrm.agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    server: str
    api_key: str
    cameras: tuple[str, ...]
    data_dir: Path
    realtime: bool = True
    keep_frames: int = 5
    decide_after: int = 5  # good frames before a track is decided (else at its end)
    sync_seconds: float = 2.0
    exit_when_done: bool = False  # for video files: stop once every file is processed
    metrics_port: int | None = None


class LocalGallery:
    """The opted-in customers' templates, kept in step with the server (ETag polling)."""

    def __init__(self) -> None:
        self.etag: str | None = None
        self.threshold = 1.1  # nothing matches until the first sync
        self.model_id = ""
        self._gallery = Gallery(128)
        self._lock = threading.Lock()

    def sync(self, client: httpx.Client) -> bool:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        response = client.get(f"{API_PREFIX}/agent/gallery", headers=headers)
        if response.status_code == 304:
            return False
        response.raise_for_status()
        body = response.json()
        templates = body["templates"]
        dim = len(base64.b64decode(templates[0]["vector"])) // 4 if templates else 128
        gallery = Gallery(dim)
        if templates:
            vectors = np.stack(
                [np.frombuffer(base64.b64decode(t["vector"]), np.float32) for t in templates]
            )
            gallery.add(
                [t["id"] for t in templates], [t["customer_id"] for t in templates], vectors
            )
        with self._lock:
            self._gallery, self.threshold = gallery, float(body["threshold"])
            self.model_id, self.etag = body["model_id"], response.headers.get("ETag")
        return True

    def decide(self, template: np.ndarray) -> tuple[str, float] | None:
        with self._lock:
            (decision,) = self._gallery.identify(template[None, :], self.threshold)
        return (decision.match.customer_id, decision.match.similarity) if decision.match else None


class Agent:
    """One process next to a store's cameras."""

    def __init__(self, config: AgentConfig, pipeline: FacePipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.outbox = Outbox(config.data_dir / "outbox.sqlite")
        self.gallery = LocalGallery()
        self.metrics = Registry()
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._client = httpx.Client(
            base_url=config.server,
            timeout=10,
            headers={"X-API-Key": config.api_key, "X-Facecrm-Agent-Version": __version__},
            event_hooks={"request": [self._report_depth]},
        )
        self.metrics.gauge(
            "facecrm_agent_queue_depth", self.outbox.depth, "events waiting for delivery"
        )
        self.metrics.gauge(
            "facecrm_agent_queue_oldest_seconds",
            self.outbox.oldest_age,
            "age of the oldest undelivered event",
        )

    def _report_depth(self, request: httpx.Request) -> None:
        """Every request tells the server how many events wait here (its devices page)."""
        request.headers["X-Facecrm-Queue-Depth"] = str(self.outbox.depth())

    # -- decisions -----------------------------------------------------------------

    def decide(self, track: Track) -> None:
        """Embed the track's best frames together and decide once; forget the chips."""
        if track.decided:
            return
        track.decided = True
        chips = [face.chip for _, face in track.best if face.chip is not None]
        track.forget()
        wrong_model = self.gallery.model_id not in {"", self.pipeline.model_id}
        if not chips or wrong_model:
            self.metrics.inc("facecrm_agent_unknown_tracks_total", help="tracks not opted in")
            return
        vectors = self.pipeline.embedder.embed(chips)
        template = normalize(vectors.mean(axis=0, keepdims=True))[0]
        self.metrics.inc("facecrm_agent_faces_embedded_total", len(chips), "chips embedded")
        match = self.gallery.decide(template)
        if match is None:
            self.metrics.inc("facecrm_agent_unknown_tracks_total", help="tracks not opted in")
            return
        customer_id, similarity = match
        event = {
            "key": track.id,  # a random uuid: the server applies each key once
            "type": "visit",
            "customer_id": customer_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(track.started)),
            "camera": track.camera,
            "similarity": round(similarity, 4),
        }
        self.outbox.put(track.id, event)
        self._wake.set()  # deliver now, not at the next poll
        self.metrics.inc("facecrm_agent_known_tracks_total", help="tracks of opted-in customers")

    # -- cameras -------------------------------------------------------------------

    def run_camera(self, source: str) -> None:
        tracker = Tracker(source, keep=self.config.keep_frames)
        is_file = Path(source).is_file()
        delay = 1.0
        while not self.stop.is_set():
            capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
            if not capture.isOpened():
                log.warning("camera %s: cannot open; retrying in %.0f s", source, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1.0
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            started, index = time.time(), 0
            while not self.stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                at = started + index / fps if is_file else time.time()
                index += 1
                self.process(tracker, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), at, source)
                if is_file and self.config.realtime:
                    wait = started + index / fps - time.time()
                    if wait > 0:
                        self.stop.wait(wait)
            capture.release()
            for track in tracker.flush():
                self.decide(track)
            if is_file:
                return
            log.warning("camera %s: stream ended; reconnecting", source)

    def process(self, tracker: Tracker, frame: np.ndarray, at: float, camera: str) -> None:
        faces = self.pipeline.faces(frame, embed=False)
        self.metrics.inc("facecrm_agent_frames_total", camera=camera, help="frames processed")
        self.metrics.inc(
            "facecrm_agent_faces_total", len(faces), camera=camera, help="faces detected"
        )
        for track in tracker.update(faces, at):
            self.decide(track)
        for track in tracker.tracks:
            if not track.decided and len(track.best) >= self.config.decide_after:
                self.decide(track)

    # -- delivery and sync ---------------------------------------------------------

    def deliver_once(self) -> int:
        """Send queued events in order; returns how many the server acknowledged."""
        batch = self.outbox.peek()
        if not batch:
            return 0
        response = self._client.post(
            f"{API_PREFIX}/agent/events", json={"events": [body for _, body in batch]}
        )
        response.raise_for_status()
        self.outbox.ack(batch[-1][0])
        self.metrics.inc("facecrm_agent_events_delivered_total", len(batch), help="events sent")
        try:
            outcomes = response.json().get("outcomes", [])
        except (ValueError, AttributeError):
            outcomes = []
        rejected = outcomes.count("rejected")  # malformed events are dropped, not retried
        if rejected:
            log.warning("the server rejected %d malformed events; they are dropped", rejected)
            self.metrics.inc("facecrm_agent_events_rejected_total", rejected, help="bad events")
        return len(batch)

    def _loop(self, action: str, period: float) -> None:
        delay = period
        while not self.stop.is_set():
            try:
                if action == "sync":
                    self.gallery.sync(self._client)
                elif self.deliver_once():
                    continue
                delay = period
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("%s: server unreachable (%s); retrying", action, type(exc).__name__)
                delay = min(delay * 2, 15)
            if action == "deliver" and delay == period:
                self._wake.wait(delay)  # a new event wakes the sender at once
                self._wake.clear()
            else:
                self.stop.wait(delay)

    def run(self) -> None:
        """Run every camera until stopped (or, with exit_when_done, until files end)."""
        try:
            self.gallery.sync(self._client)
        except httpx.HTTPError as exc:
            log.warning("first gallery sync failed (%s); will retry", type(exc).__name__)
        workers = [
            threading.Thread(
                target=self._loop, args=("sync", self.config.sync_seconds), daemon=True
            ),
            threading.Thread(target=self._loop, args=("deliver", 0.5), daemon=True),
        ]
        if self.config.metrics_port:
            workers.append(threading.Thread(target=self._serve_metrics, daemon=True))
        for w in workers:
            w.start()
        cameras = [threading.Thread(target=self.run_camera, args=(c,)) for c in self.config.cameras]
        for c in cameras:
            c.start()
        try:
            for c in cameras:
                while c.is_alive():
                    c.join(0.5)
            if self.config.exit_when_done:
                deadline = time.time() + 30
                while self.outbox.depth() and time.time() < deadline:
                    time.sleep(0.2)
            else:
                self.stop.wait()
        finally:
            self.stop.set()

    def _serve_metrics(self) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (agent.metrics.render() if self.path == "/metrics" else "ok\n").encode()
                self.send_response(200 if self.path in {"/metrics", "/healthz"} else 404)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        assert self.config.metrics_port is not None
        ThreadingHTTPServer(("127.0.0.1", self.config.metrics_port), Handler).serve_forever()
