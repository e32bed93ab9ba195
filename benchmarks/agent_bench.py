"""Store agent: frames/second, CPU per camera, and frame → console alert latency.

    python benchmarks/agent_bench.py [--frames 300] [--alerts 20] [--cascade-only]
    python benchmarks/agent_bench.py --smoke    # tests/data, 6 frames and 2 alerts per row

1. Throughput, one thread: synthetic camera frames (640x480 and 1920x1080) with
   1 to 5 real faces pasted from ../shared/faces, drifting a few pixels per
   frame so that tracking works; each frame goes through the agent's full
   per-frame path (detect, align, quality, track; embedding and the decision
   when a track has its 5 best frames). CPU per camera is CPU seconds per
   frame x 25 fps. The cascade rows enroll every pasted face (both models), so
   every track runs SFace on its kept chips (the worst case: all customers) and
   every face gets its five-point SFace chip each frame.
2. Latency: `facecrm serve` in its own process (visit window 1 minute, the
   smallest, with bursts 61 s of video time apart, so every track is a new
   visit; no alert cooldown); an SSE client subscribed as a store associate; the agent
   in this process sends Lin-Manuel Miranda's video frames in bursts (one track
   each). Latency = from the start of processing the frame that completed the
   track's evidence to the alert arriving on the SSE stream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from facecrm.agent.runner import Agent, AgentConfig, LocalGallery
from facecrm.agent.tracker import Tracker
from facecrm.config import Settings, configure
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Photo
from facecrm.gallery.gallery import Gallery
from facecrm.gallery.threshold import load_calibration, load_cascade
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import build_pipeline
from facecrm.vision.second import build_second_opinion

from common import faces_dir, link_model_cache, machine, smoke_faces

PASSWORD = "benchmark-password"


def face_crops(faces: Path, pipeline, settings: Settings, n: int = 5) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    crops = []
    for path in sorted((faces / "identities").glob("*/1.*"))[:n]:
        image = read_image(path, settings)
        box = pipeline.detector.detect(image)[0].box
        m = 0.4
        x0, y0 = max(0, int(box.x - m * box.width)), max(0, int(box.y - m * box.height))
        x1 = min(image.shape[1], int(box.x + (1 + m) * box.width))
        y1 = min(image.shape[0], int(box.y + (1 + m) * box.height))
        crops.append(cv2.resize(image[y0:y1, x0:x1], (110, 130)))
    return crops


def frames(crops: list[np.ndarray], count: int, faces_per_frame: int, size: tuple[int, int]):  # type: ignore[no-untyped-def]
    base = np.full((480, 640, 3), 90, np.uint8)
    slots = [(20, 40), (150, 60), (280, 40), (410, 60), (520, 300)]
    for i in range(count):
        frame = base.copy()
        for k in range(faces_per_frame):
            x, y = slots[k]
            dx = int(8 * np.sin(i / 15 + k))
            crop = crops[k % len(crops)]
            frame[y : y + crop.shape[0], x + dx : x + dx + crop.shape[1]] = crop
        yield frame if size == (640, 480) else cv2.resize(frame, size)


def cascade_gallery(agent: Agent, crops: list[np.ndarray], settings: Settings) -> LocalGallery:
    """A synced-like gallery where every pasted face is a customer with both models'
    templates and the shipped cascade calibration (what a cascade server sends)."""
    assert agent.second is not None
    pipeline = agent.pipeline
    gallery = LocalGallery()
    first, second = [], {}
    for k, crop in enumerate(crops):
        face = pipeline.faces(crop)[0]
        assert face.template is not None
        first.append(face.template)
        second[f"c{k}"] = agent.second.embed(crop, [face])
    gallery._gallery = Gallery(len(first[0]))
    gallery._gallery.add(range(len(first)), [f"c{k}" for k in range(len(first))], np.stack(first))
    gallery._second = second
    gallery.cascade = load_cascade(pipeline.model_id, settings.data_dir)
    gallery.threshold = load_calibration(pipeline.model_id).threshold(settings.target_fmr)
    gallery.model_id = pipeline.model_id
    return gallery


def throughput(
    faces: Path, count: int, cascade_only: bool = False, model_cache: Path | None = None
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-agent-bench-"))
    link_model_cache(data_dir, model_cache)
    settings = configure(data_dir=data_dir, threads=1)
    cv2.setNumThreads(1)
    pipeline = build_pipeline(settings)
    crops = face_crops(faces, pipeline, settings)
    config = AgentConfig("http://127.0.0.1:9", "none", (), settings.data_dir / "agent")
    agent = Agent(config, pipeline)
    cascade = Agent(config, pipeline, build_second_opinion(settings))
    cascade.gallery = cascade_gallery(cascade, crops, settings)
    print(
        "| frame | faces | decision | frames/s (1 thread) | CPU ms / frame "
        "| CPU of one core at 25 fps | SFace chips | known tracks |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    runs = [("dlib alone, nobody enrolled", agent), ("cascade, every face a customer", cascade)]
    for size in ((640, 480), (1920, 1080)):
        for n in (1, 3, 5):
            for label, who in runs[1:] if cascade_only else runs:
                batch = list(frames(crops, count, n, size))
                tracker = Tracker("bench")
                chips = who.metrics.counter("facecrm_agent_second_faces_embedded_total")
                known = who.metrics.counter("facecrm_agent_known_tracks_total")
                wall, cpu = time.perf_counter(), time.process_time()
                for i, frame in enumerate(batch):
                    who.process(tracker, frame, i / 25, "bench")
                for track in tracker.flush():
                    who.decide(track)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                per = cpu / count
                chips = who.metrics.counter("facecrm_agent_second_faces_embedded_total") - chips
                known = who.metrics.counter("facecrm_agent_known_tracks_total") - known
                print(
                    f"| {size[0]}x{size[1]} | {n} | {label} | {count / wall:.1f} | "
                    f"{per * 1000:.1f} | {min(per * 25, 9.99) * 100:.0f}% | {chips:.0f} | "
                    f"{known:.0f} |",
                    flush=True,
                )


def latency(faces: Path, alerts: int, model_cache: Path | None = None) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-latency-"))
    link_model_cache(data_dir, model_cache)
    settings = configure(data_dir=data_dir)
    crm = FaceCRM(settings, migrate=True)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "B", "Bench", SYSTEM)
        accounts.create_staff(session, "assoc", PASSWORD, "associate", [store.id], principal=SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    still = read_image(faces / "identities/lin_manuel_miranda/1.png", settings)
    crm.enroll(
        "Lin-Manuel Miranda",
        [Photo("still", still)],
        CURRENT,
        "cli",
        SYSTEM,
        profile={"tier": "vip"},
    )
    crm.engine.dispose()
    capture = cv2.VideoCapture(str(faces / "video/short_hamilton_clip.mp4"))
    clip = []
    for _ in range(12):
        _, frame = capture.read()
        clip.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    with socket_port() as port:
        env = {
            **os.environ,
            "FACECRM_DATA_DIR": str(data_dir),
            "FACECRM_VISIT_WINDOW_MINUTES": "1",
            "FACECRM_ALERT_COOLDOWN_MINUTES": "0",  # every new visit alerts
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "facecrm", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url)
            token = httpx.post(
                f"{url}/api/v1/auth/token", data={"username": "assoc", "password": PASSWORD}
            ).json()["access_token"]
            arrivals: list[float] = []
            connected = threading.Event()
            threading.Thread(
                target=listen, args=(url, token, arrivals, connected), daemon=True
            ).start()
            connected.wait(10)
            agent = Agent(AgentConfig(url, key, (), data_dir / "agent"), build_pipeline(settings))
            agent.gallery.sync(agent._client)
            threading.Thread(target=agent._loop, args=("deliver", 0.5), daemon=True).start()
            starts: list[float] = []
            clock = 0.0
            for _ in range(alerts):
                tracker = Tracker("cam")
                for frame in clip:
                    before = agent.metrics.counter("facecrm_agent_known_tracks_total")
                    t0 = time.perf_counter()
                    agent.process(tracker, frame, clock, "cam")
                    clock += 1 / 30
                    if agent.metrics.counter("facecrm_agent_known_tracks_total") > before:
                        starts.append(t0)
                        break
                deadline = time.time() + 10
                while len(arrivals) < len(starts) and time.time() < deadline:
                    time.sleep(0.005)
                clock += 61  # the customer leaves; the next burst is a new track and visit
            ms = np.array([a - s for s, a in zip(starts, arrivals, strict=False)]) * 1000
            print(f"\n{alerts} bursts: {len(starts)} known tracks, {len(arrivals)} alerts")
            print(
                f"\nframe → console alert (SSE), {len(ms)} alerts: "
                f"p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


def listen(url: str, token: str, arrivals: list[float], connected: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with (
        contextlib.suppress(httpx.HTTPError),  # the server stops at the end of the run
        httpx.stream("GET", f"{url}/api/v1/alerts/stream", headers=headers, timeout=None) as r,
    ):
        for line in r.iter_lines():
            connected.set()
            if line.startswith("data:") and json.loads(line[5:]).get("type") == "alert":
                arrivals.append(time.perf_counter())


@contextlib.contextmanager
def socket_port():  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def wait_healthy(url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--alerts", type=int, default=20)
    parser.add_argument("--cascade-only", action="store_true", help="only the cascade rows")
    parser.add_argument("--smoke", action="store_true", help="tests/data, a few frames, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.alerts = 6, 2
    faces = smoke_faces() if args.smoke else faces_dir()
    print(f"machine: {machine()}\n")
    throughput(faces, args.frames, args.cascade_only, args.model_cache)
    if not args.cascade_only:
        latency(faces, args.alerts, args.model_cache)


if __name__ == "__main__":
    main()
