"""`facecrm agent`: cameras → faces → tracks → one decision per track → visit events.

Privacy by construction: the agent decides known/unknown itself, against the
templates of opted-in customers it syncs from the server. A track that is not
an opted-in customer only increments a counter; its chips are dropped and
nothing about it is written, logged or sent. No frame or crop leaves the
agent, with one exception a store manager triggers: one snapshot of a camera to draw zones
on (`send_snapshots`), with every detected face pixelated, held only in the server's
memory and discarded once shown. Known customers become visit events with an idempotency
key, written to a durable outbox and delivered in order when the server is reachable.

Operations: one start-up line and a periodic status line (counts only), a heartbeat
with each camera's last frame time (the server alerts the store's managers when a
camera falls silent), and camera names masked wherever they go (logs, errors, metrics,
events): a camera URL carries its password.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from facecrm import __version__
from facecrm.agent.analytics import Analytics, AttributeModels, no_models
from facecrm.agent.queue import Outbox
from facecrm.agent.tracker import Track, Tracker
from facecrm.config import API_PREFIX
from facecrm.errors import FacecrmError
from facecrm.gallery.cascade import Accept, CascadeCalibration, decide
from facecrm.gallery.gallery import Gallery
from facecrm.logs import mask_secrets
from facecrm.metrics import Registry
from facecrm.vision.embed import normalize
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.second import SecondOpinion
from facecrm.vision.types import Face

log = logging.getLogger("facecrm.agent")
status_log = logging.getLogger("facecrm.agent.status")  # counts only: see `status_line`
CAMERA_NAME_MAX = 100  # what the server stores of a camera's (masked) name
SNAPSHOT_HEADER = "X-Facecrm-Snapshot"  # on a sync page: staff asked for a camera's picture
SNAPSHOT_WAIT = 5.0  # seconds for a requested camera's next frame


class CameraError(FacecrmError):
    """A camera that cannot work, found before the run starts (`--exit-when-done`).

    A run meant to end (a video file, a test, a batch) must not retry a typo forever.
    The message names the camera masked (`camera_name`): it may be a URL with a password.
    """

    status = 422
    reason = "camera_unavailable"


def camera_name(source: str) -> str:
    """How a camera is named everywhere outside `cv2.VideoCapture`: masked and bounded."""
    return mask_secrets(source)[:CAMERA_NAME_MAX]


def camera_names(sources: tuple[str, ...]) -> dict[str, str]:
    """Each source's masked name; two that mask alike (same URL, other password) get `#2`."""
    names: dict[str, str] = {}
    for source in sources:
        name = camera_name(source)
        n = 1
        while name in names.values():
            n += 1
            suffix = f" #{n}"
            name = camera_name(source)[: CAMERA_NAME_MAX - len(suffix)] + suffix
        names[source] = name
    return names


def _open(source: str) -> cv2.VideoCapture:
    """Open a camera; OpenCV's own exception text may quote the source, so it is dropped."""
    try:
        return cv2.VideoCapture(int(source) if source.isdigit() else source)
    except cv2.error:
        raise CameraError(f"camera {camera_name(source)}: OpenCV refused it") from None


def check_camera(source: str) -> None:
    """Raise `CameraError` with a one-line reason unless `source` gives a first frame."""
    name = camera_name(source)
    if source.isdigit():
        where = f"no camera at device index {source}"
    elif "://" in source:
        where = "the stream cannot be opened"
    elif not Path(source).exists():
        raise CameraError(f"camera {name}: no such file")
    elif not Path(source).is_file():
        raise CameraError(f"camera {name}: not a file")
    else:
        where = "the file cannot be read as video"
    capture = _open(source)
    try:
        ok = capture.isOpened() and capture.read()[0]
    except cv2.error:
        ok = False
    finally:
        capture.release()
    if not ok:
        raise CameraError(f"camera {name}: {where}")


def pixelate_faces(frame: np.ndarray, faces: Sequence[Face], block: int = 12) -> np.ndarray:
    """A copy of `frame` with every detected face (and a margin) pixelated into blocks of
    `block` pixels: a zone-drawing snapshot needs the floor and the tills, not who stood
    there, so no passer-by's face leaves the agent even in the one frame that does."""
    out = frame.copy()
    height, width = frame.shape[:2]
    for face in faces:
        b = face.box
        mx, my = 0.25 * b.width, 0.25 * b.height
        x0, y0 = max(0, int(b.x - mx)), max(0, int(b.y - my))
        x1, y1 = min(width, int(b.x + b.width + mx) + 1), min(height, int(b.y + b.height + my) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        small = cv2.resize(
            out[y0:y1, x0:x1],
            (max(1, (x1 - x0) // block), max(1, (y1 - y0) // block)),
            interpolation=cv2.INTER_AREA,
        )
        out[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return out


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
    summary_seconds: float = 60.0  # the periodic status line
    heartbeat_seconds: float = 30.0  # cameras' last frame times to the server


AGENT_ANN_MIN = 2_000_000  # exact search below: no HNSW build on a cold sync (docs/agent-sync.md)
SYNC_PAGE = 5000  # templates (or log rows) per sync page


def _unpack(model: dict[str, Any]) -> np.ndarray:
    """A page's float16 rows of one model, as float32 (similarities move by ~1e-4)."""
    data = np.frombuffer(base64.b64decode(model["vectors"]), "<f2")
    return data.reshape(len(model["ids"]), int(model["dim"]) or 1).astype(np.float32)


class LocalGallery:
    """The templates this store's agent holds, kept in step with the server's change log.

    The agent asks `GET /agent/sync` for the changes since its cursor (removed customers,
    added templates of both models, float16); a new agent, or one told 410 (the log was
    pruned past it, or the model or decision rule changed), syncs in full, in pages, into
    a new gallery that replaces the old one once complete. `mode` says how much of the
    chain's gallery this store holds (full, store, server): in `store` and `server` modes
    a track this gallery does not know is decided by the server (`Agent.decide`).

    With the server's cascade (`cascade` in the rule) a track is decided by the same rule
    as the server's identify (`gallery.cascade.decide`): the first model's gallery, then
    the second model's templates of the few candidates, then the margin rule; customers
    without second-model templates need the first model's single-model `threshold`.
    """

    def __init__(self) -> None:
        self.cursor: str | None = None
        self.etag: str | None = None  # the cursor, for status lines ("synced")
        self.mode = "full"
        self.threshold = 1.1  # nothing matches until the first sync
        self.model_id = ""
        self.second_model_id = ""
        self.cascade: CascadeCalibration | None = None
        self.target_fmr = 1e-3
        self._second_rows: dict[str, dict[int, np.ndarray]] = {}  # customer -> id -> vector
        self._second: dict[str, np.ndarray] = {}  # their stacks, made when first needed
        self._pending: list[tuple[list[int], list[str], np.ndarray]] | None = None
        self._gallery = Gallery(128, ann_min_size=AGENT_ANN_MIN)
        self._lock = threading.Lock()
        self.snapshot_requested = False  # the server's flag on the last sync (issue 13)

    def sync(self, client: httpx.Client, page: int = SYNC_PAGE) -> bool:
        """Fetch and apply every page of changes; whether anything changed."""
        changed = False
        staging: LocalGallery | None = None  # a full sync builds here, then replaces
        cursor = self.cursor
        for _ in range(100_000):  # bounded: a server that always says "more" is a bug
            params: dict[str, str | int] = {"limit": page}
            if cursor is not None:
                params["cursor"] = cursor
            response = client.get(f"{API_PREFIX}/agent/sync", params=params)
            if response.status_code == 410 and cursor is not None:
                cursor, staging = None, None  # full_resync_required: start over
                continue
            response.raise_for_status()
            self.snapshot_requested = response.headers.get(SNAPSHOT_HEADER) == "requested"
            body = response.json()
            if body["reset"]:
                staging = LocalGallery()
                staging._rule(body["rule"], body["mode"])
                staging._pending = []  # one index build at the end, not one per page
            target = staging if staging is not None else self
            changed = target._apply(body) or changed
            cursor = body["cursor"]
            if staging is not None and not cursor.startswith("f"):
                self._replace(staging)  # the full pass is complete: swap in
                staging, changed = None, True
            if not body["more"]:
                break
        with self._lock:
            self.cursor = self.etag = cursor if staging is None else self.cursor
        return changed

    def _rule(self, rule: dict[str, Any], mode: str) -> None:
        models = list(rule.get("models") or [rule["model_id"]])
        cascade = rule.get("cascade")
        self.mode, self.model_id = mode, str(rule["model_id"])
        self.second_model_id = models[1] if len(models) > 1 else ""
        self.threshold, self.target_fmr = float(rule["threshold"]), float(rule["target_fmr"])
        self.cascade = CascadeCalibration.from_json(cascade) if cascade else None

    def _flush(self) -> None:
        """Add the pages a full sync collected to the search index at once."""
        pending, self._pending = self._pending or [], None
        if not pending:
            return
        vectors = np.concatenate([v for _, _, v in pending])
        if self._gallery.dim != vectors.shape[1] and not len(self._gallery):
            self._gallery = Gallery(vectors.shape[1], ann_min_size=AGENT_ANN_MIN)
        ids = [i for page, _, _ in pending for i in page]
        self._gallery.add(ids, [c for _, owners, _ in pending for c in owners], vectors)

    def _replace(self, other: LocalGallery) -> None:
        with other._lock:
            other._flush()
        with self._lock, other._lock:
            self.mode, self.model_id, self.second_model_id = (
                other.mode,
                other.model_id,
                other.second_model_id,
            )
            self.threshold, self.target_fmr, self.cascade = (
                other.threshold,
                other.target_fmr,
                other.cascade,
            )
            self._gallery, self._second = other._gallery, other._second
            self._second_rows = other._second_rows

    def _apply(self, body: dict[str, Any]) -> bool:
        """Removed customers first, then the added templates (as they are now)."""
        staging = self._pending is not None  # a full sync: the index is built at the end
        models = body["models"]
        first = models.get(self.model_id) or {"ids": []}
        second = models.get(self.second_model_id) or {"ids": []}
        with self._lock:
            for customer_id in body["removed"]:
                self._gallery.remove_customer(customer_id)
                self._second.pop(customer_id, None)
                self._second_rows.pop(customer_id, None)
            if body["removed"]:
                self._flush()
            if first["ids"]:
                self._pending = [] if self._pending is None else self._pending
                self._pending.append((first["ids"], first["customers"], _unpack(first)))
                if not staging:
                    self._flush()
            if second["ids"]:
                rows = self._second_rows
                for template_id, owner, vector in zip(
                    second["ids"], second["customers"], _unpack(second), strict=True
                ):
                    rows.setdefault(owner, {})[template_id] = vector
                    self._second.pop(owner, None)
        return bool(body["removed"] or first["ids"] or second["ids"])

    def _stack(self, customer_id: str) -> np.ndarray | None:
        """The customer's second-model templates as one array (made once, when needed)."""
        stack = self._second.get(customer_id)
        if stack is None and customer_id in self._second_rows:
            stack = np.stack(list(self._second_rows[customer_id].values()))
            self._second[customer_id] = stack
        return stack

    def size(self) -> tuple[int, int]:
        """(templates, customers) held."""
        with self._lock:
            return len(self._gallery), self._gallery.customers()

    def decide(
        self, template: np.ndarray, second: Callable[[], np.ndarray | None] | None = None
    ) -> tuple[str, float] | None:
        """(customer, first-model similarity) or None. `second()` gives the track's
        second-model template; it is called only when a candidate could be accepted and
        has second-model templates (None: the agent cannot run the second model)."""
        with self._lock:
            gallery, threshold, cascade = self._gallery, self.threshold, self.cascade
            fmr = self.target_fmr
        if cascade is None:
            (decision,) = gallery.identify(template[None, :], threshold)
            match = decision.match
            return (match.customer_id, match.similarity) if match else None
        (candidates,) = gallery.candidates(template[None, :])

        def scores(ids: Sequence[str]) -> dict[str, float]:
            with self._lock:
                seconds = {c: s for c in ids if (s := self._stack(c)) is not None}
            query = second() if seconds and second is not None else None
            if query is None:
                return {}
            return {c: float(np.max(s @ query)) for c, s in seconds.items()}

        first = {c.customer_id: c.similarity for c in candidates}
        outcome = decide(first, scores, cascade, fmr, threshold)
        return (outcome.customer, outcome.first) if isinstance(outcome, Accept) else None


class Agent:
    """One process next to a store's cameras."""

    def __init__(
        self,
        config: AgentConfig,
        pipeline: FacePipeline,
        second: SecondOpinion | None = None,
        attributes: Callable[[], AttributeModels] = no_models,
    ) -> None:
        """`attributes` loads the attribute models the first time a store turns analytics
        on (never before: most stores never do)."""
        self.config = config
        self.pipeline = pipeline
        # the cascade's second model; without it a cascade server's gallery is decided by
        # the first model alone at its single-model threshold (never the stage threshold)
        self.second = second
        self.outbox = Outbox(config.data_dir / "outbox.sqlite")
        self.gallery = LocalGallery()
        self.metrics = Registry()
        self.stop = threading.Event()
        # issue 13: anonymous queue/footfall analytics (agent.analytics); models load lazily
        self.analytics = Analytics(attributes, self.metrics)
        self._wake = threading.Event()
        # issue 13: cameras whose next frame is a zone-drawing snapshot, and those frames
        self._wanted: set[str] = set()
        self._shots: dict[str, np.ndarray] = {}
        # each camera's masked name, and the time of its last frame (None: none yet)
        self.names = camera_names(config.cameras)
        self.last_frame: dict[str, float | None] = dict.fromkeys(self.names.values())
        self._status_at = (time.time(), 0.0)  # (when, frames) of the previous status line
        self._client = httpx.Client(
            base_url=config.server,
            timeout=10,
            headers={"X-API-Key": config.api_key},
        )
        self.metrics.gauge(
            "facecrm_agent_queue_depth", self.outbox.depth, "events waiting for delivery"
        )
        self.metrics.gauge(
            "facecrm_agent_queue_oldest_seconds",
            self.outbox.oldest_age,
            "age of the oldest undelivered event",
        )

    # -- decisions -----------------------------------------------------------------

    def decide(self, track: Track) -> None:
        """Embed the track's best frames together and decide once; forget the chips."""
        if track.decided:
            return
        track.decided = True
        chips = [face.chip for _, face in track.best if face.chip is not None]
        second_chips = [f.second_chip for _, f in track.best if f.second_chip is not None]
        track.forget()
        wrong_model = self.gallery.model_id not in {"", self.pipeline.model_id}
        if not chips or wrong_model:
            self.metrics.inc("facecrm_agent_unknown_tracks_total", help="tracks not opted in")
            return
        vectors = self.pipeline.embedder.embed(chips)
        template = normalize(vectors.mean(axis=0, keepdims=True))[0]
        self.metrics.inc("facecrm_agent_faces_embedded_total", len(chips), "chips embedded")
        seconds: list[np.ndarray | None] = []  # the track's second-model template, once

        def second() -> np.ndarray | None:
            if not seconds:
                seconds.append(self._second_template(second_chips))
            return seconds[0]

        match = self.gallery.decide(template, second)
        if match is None and self.gallery.mode != "full":
            match = self._ask_server(template, second if self.gallery.cascade else None)
        if match is None:
            self.metrics.inc("facecrm_agent_unknown_tracks_total", help="tracks not opted in")
            return
        customer_id, similarity = match
        track.customer_id = customer_id  # queue alerts may name a consenting customer
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

    def _ask_server(
        self, template: np.ndarray, second: Callable[[], np.ndarray | None] | None
    ) -> tuple[str, float] | None:
        """The server's decision for a track this store's gallery does not hold (store
        and server modes): its template(s) only, never a frame; unreachable: unknown."""
        other = second() if second is not None else None
        body = {
            "model_id": self.gallery.model_id,
            "template": base64.b64encode(template.astype("<f4").tobytes()).decode(),
            "second": None
            if other is None
            else base64.b64encode(other.astype("<f4").tobytes()).decode(),
        }
        try:
            response = self._client.post(f"{API_PREFIX}/agent/decide", json=body)
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "server decision failed (%s); the track counts as unknown", type(exc).__name__
            )
            return None
        self.metrics.inc("facecrm_agent_server_decisions_total", help="tracks the server decided")
        if not answer.get("known"):
            return None
        return str(answer["customer_id"]), float(answer["similarity"])

    def _second_template(self, chips: list[np.ndarray]) -> np.ndarray | None:
        """The track's mean second-model template (run once per track, only when asked)."""
        if self.second is None or not chips:
            return None
        vectors = self.second.embed_chips(chips)
        self.metrics.inc(
            "facecrm_agent_second_faces_embedded_total", len(chips), "chips the second model ran on"
        )
        mean: np.ndarray = normalize(vectors.mean(axis=0, keepdims=True))[0]
        return mean

    # -- cameras -------------------------------------------------------------------

    def run_camera(self, source: str) -> None:
        name = self.names.get(source) or camera_name(source)
        tracker = Tracker(name, keep=self.config.keep_frames)
        is_file = Path(source).is_file()
        delay = 1.0
        while not self.stop.is_set():
            try:
                capture = _open(source)
            except CameraError:
                capture = cv2.VideoCapture()  # not opened: retried below
            if not capture.isOpened():
                log.warning("camera %s: cannot open; retrying in %.0f s", name, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30)
                continue
            delay = 1.0
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            started, index = time.time(), 0
            while not self.stop.is_set():
                try:
                    ok, frame = capture.read()
                except cv2.error:  # its text may quote the source: only the fact is logged
                    log.warning("camera %s: OpenCV failed to read a frame", name)
                    ok = False
                if not ok:
                    break
                at = started + index / fps if is_file else time.time()
                index += 1
                self.process(tracker, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), at, name)
                if is_file and self.config.realtime:
                    wait = started + index / fps - time.time()
                    if wait > 0:
                        self.stop.wait(wait)
            capture.release()
            for track in tracker.flush():
                self.decide(track)
            if is_file:
                return
            log.warning("camera %s: stream ended; reconnecting", name)

    def process(self, tracker: Tracker, frame: np.ndarray, at: float, camera: str) -> None:
        """One frame of `camera` (its masked name) seen at `at`."""
        self.last_frame[camera] = time.time()  # health: when frames last arrived, not `at`
        faces = self.pipeline.faces(frame, embed=False)
        if camera in self._wanted:  # issue 13: staff asked for a picture (send_snapshots)
            self._wanted.discard(camera)
            self._shots[camera] = pixelate_faces(frame, faces)
        if self.second is not None and self.gallery.cascade is not None:
            # the second model's chip of every face, kept with the track's best frames
            second = self.second
            faces = [dataclasses.replace(f, second_chip=second.chip(frame, f)) for f in faces]
        self.metrics.inc("facecrm_agent_frames_total", camera=camera, help="frames processed")
        self.metrics.inc(
            "facecrm_agent_faces_total", len(faces), camera=camera, help="faces detected"
        )
        for track in tracker.update(faces, at):
            self.decide(track)
        for track in tracker.tracks:
            if not track.decided and len(track.best) >= self.config.decide_after:
                self.decide(track)
        self.analytics.observe(camera, frame, faces, tracker.tracks, at)  # issue 13

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
                    if self.gallery.snapshot_requested:
                        self.send_snapshots()
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
        """Run every camera until stopped (or, with exit_when_done, until files end).

        With exit_when_done, a camera that cannot give a first frame (a missing or
        unreadable file, a bad device index, a dead stream) stops the run before it starts
        (`CameraError`); without it the agent keeps retrying, as a store box should.
        """
        if self.config.exit_when_done:
            for source in self.config.cameras:
                check_camera(source)
        try:
            self.gallery.sync(self._client)
        except httpx.HTTPError as exc:
            log.warning("first gallery sync failed (%s); will retry", type(exc).__name__)
        status_log.info(self.startup_line())
        self.analytics.refresh(self._client)  # issue 13: zones and switches before frames
        workers = [
            threading.Thread(
                target=self.analytics.run, args=(self._client, self.stop), daemon=True
            ),
            threading.Thread(
                target=self._loop, args=("sync", self.config.sync_seconds), daemon=True
            ),
            threading.Thread(target=self._loop, args=("deliver", 0.5), daemon=True),
            threading.Thread(target=self._report_loop, daemon=True),
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
            self.analytics.finish()  # issue 13: the last counters and alerts leave
            self.analytics.send(self._client, final=True)
            status_log.info(self.status_line())
            self.heartbeat()

    def send_snapshots(self, wait: float = SNAPSHOT_WAIT) -> int:
        """Upload one JPEG of each camera staff asked for (to draw zones on); how many.

        The only time a frame leaves the agent: on a manager's request, one frame, to the
        server's memory (`crm.snapshots`), never kept here either.
        """
        response = self._client.get(f"{API_PREFIX}/agent/snapshots")
        response.raise_for_status()
        wanted = [c for c in response.json().get("cameras", []) if c in self.last_frame]
        self._wanted.update(wanted)
        deadline = time.monotonic() + wait
        while any(c not in self._shots for c in wanted) and time.monotonic() < deadline:
            if self.stop.wait(0.05):
                break
        self._wanted.difference_update(wanted)
        sent = 0
        for camera in wanted:
            frame = self._shots.pop(camera, None)
            if frame is None:
                log.warning("snapshot: no frame from camera %s in %.0f s", camera, wait)
                continue
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                continue
            put = self._client.put(
                f"{API_PREFIX}/agent/snapshots",
                params={"camera": camera},
                content=jpeg.tobytes(),
                headers={"content-type": "image/jpeg"},
            )
            if put.is_error:
                log.warning("snapshot of camera %s refused (%d)", camera, put.status_code)
            else:
                sent += 1
        return sent

    # -- operations ----------------------------------------------------------------

    def _me(self) -> dict[str, object]:
        try:
            response = self._client.get(f"{API_PREFIX}/me")
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    def startup_line(self) -> str:
        """Cameras (masked), store, gallery size and model: what an operator checks first."""
        me = self._me()
        stores = me.get("stores")
        store = ",".join(map(str, stores)) if isinstance(stores, list) and stores else "unknown"
        templates, customers = self.gallery.size()
        return (
            f"agent {__version__} started: store {store}, device {me.get('name') or 'unknown'},"
            f" {len(self.names)} camera(s) [{', '.join(self.names.values())}],"
            f" gallery {templates} template(s) of {customers} customer(s)"
            f" ({'synced' if self.gallery.etag else 'not synced yet'}),"
            f" model {self.pipeline.model_id}, server {mask_secrets(self.config.server)}"
        )

    def status_line(self) -> str:
        """Frames (and rate since the last line), tracks known/unknown, queue, camera ages."""
        now = time.time()
        frames = sum(
            self.metrics.counter("facecrm_agent_frames_total", camera=c) for c in self.last_frame
        )
        then, before = self._status_at
        self._status_at = (now, frames)
        rate = (frames - before) / (now - then) if now > then else 0.0
        ages = ", ".join(
            f"{c} {'no frame yet' if at is None else f'{now - at:.0f} s ago'}"
            for c, at in self.last_frame.items()
        )
        return (
            f"agent status: {frames:.0f} frames ({rate:.1f}/s),"
            f" tracks known {self.metrics.counter('facecrm_agent_known_tracks_total'):.0f}"
            f" unknown {self.metrics.counter('facecrm_agent_unknown_tracks_total'):.0f},"
            f" queue {self.outbox.depth()} (oldest {self.outbox.oldest_age():.0f} s),"
            f" last frame: {ages or 'no cameras'}"
        )

    def heartbeat(self) -> bool:
        """Tell the server each camera's last frame time (it alerts on silent cameras), this
        agent's version and how many events wait in its outbox (its devices page)."""
        cameras = [
            {
                "camera": c,
                "last_frame_at": None
                if at is None
                else time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at)),
            }
            for c, at in self.last_frame.items()
        ]
        body = {"version": __version__, "queue_depth": self.outbox.depth(), "cameras": cameras}
        try:
            self._client.post(f"{API_PREFIX}/agent/heartbeat", json=body).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("heartbeat: server unreachable (%s)", type(exc).__name__)
            return False
        return True

    def _report_loop(self) -> None:
        """The status line every summary_seconds and a heartbeat every heartbeat_seconds."""
        next_status = time.monotonic() + self.config.summary_seconds
        next_beat = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + self.config.heartbeat_seconds
            if now >= next_status:
                status_log.info(self.status_line())
                next_status = now + self.config.summary_seconds
            self.stop.wait(max(0.05, min(next_beat, next_status) - time.monotonic()))

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
