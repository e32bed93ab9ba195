"""Anonymous analytics on the store agent: checkout queues and hourly footfall (issue 13).

The agent's tracks (`agent.tracker`) are placed in the zones the store drew on each camera
(`alerts.zones`; a track's point is the centre of its face box, in normalised
coordinates: a face detector sees no feet). Nothing here knows who anyone is.

Queues. Per `checkout_queue:<n>` zone: the tracks in it (the queue length), each one's
waiting time (since it was first in the zone) and, with the store's sentiment switch on, an
unhappiness signal: every `SAMPLE_SECONDS` at most (never per frame) a frontal face's
negative expression score is sampled; the track is unhappy while, over the last
`WINDOW_SECONDS`, at least `UNHAPPY_SHARE` of its samples exceed its own baseline (a low
percentile of all its samples, so a face that always scores "negative" is its own normal)
by `MARGIN`. One frame, a profile or a talking mouth never decides. The store's
`checkout_queue` rule fires when someone waited `wait_minutes` and was unhappy for
`unhappy_seconds`, or when `max_length` people queued through most of `LENGTH_HOLD_SECONDS`;
once per zone per `cooldown_minutes`. The alert says zone, length, wait and confidence; the
agent adds the customer id only for a track it already recognised as an opted-in customer,
and the server names them only with their `experience_analytics` consent.

Footfall. When a track ends it is folded into counters of the hour it ended (UTC): per zone
it was in, its dwell time bucket; `entrance` counts an entry; with the demographics switch,
its age band x gender (majority of its samples); with the sentiment switch, its majority
sentiment. Only closed hours leave, as k-anonymous rows (`alerts.footfall.k_anonymous`):
no per-track row, no count below 5. Each checkout zone's queue length is also kept per hour
(distinct people, most at once, person-seconds and seconds watched, so mean = the ratio);
it leaves only for hours at least 5 people queued in (`alerts.footfall.queue_rows`).
Counters live in memory (an hour at most is lost with the process). With both switches
off no attribute model runs at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from facecrm.agent.tracker import Track
from facecrm.alerts import footfall
from facecrm.config import API_PREFIX
from facecrm.errors import ConfigError
from facecrm.metrics import Registry
from facecrm.vision.types import Face, Image

log = logging.getLogger("facecrm.agent.analytics")

SAMPLE_SECONDS = 1.0  # attributes at most once per track per second
FRONTAL_YAW = 0.25  # |yaw| in eye distances: beyond it expressions are unreliable
WINDOW_SECONDS = 30.0  # the unhappiness signal's sliding window
MARGIN = 0.2  # above the track's own baseline
BASELINE_PERCENTILE = 10.0
MIN_SAMPLES = 3  # in the window, before anyone is called unhappy
UNHAPPY_SHARE = 0.6
LENGTH_HOLD_SECONDS = 10.0  # a queue is long only if it stays long (not a passing group)
LENGTH_SHARE = 0.8
MIN_FRAMES = 3  # a track seen fewer times is detector noise: not counted
MAX_SAMPLES = 3600  # per track (an hour at one per second): bounded memory
CONFIG_SECONDS = 60.0
FLUSH_SECONDS = 60.0
MAX_ROWS = 5000  # per report (the server's bound); beyond it an outage loses the oldest
MAX_GAP = 2.0  # seconds between two frames of a queue beyond which the gap is not "watched"


class AttributeModels(Protocol):
    """What the analytics need of `vision.attributes.AttributeStage`."""

    def expression_scores(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]: ...

    def dlib_chips(
        self, image: Image, faces: Sequence[Face]
    ) -> tuple[list[npt.NDArray[np.uint8]], list[npt.NDArray[np.uint8]]]: ...

    def gender_scores(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]: ...

    def age_years(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[Any]: ...


def no_models() -> AttributeModels:
    """The factory of an agent built without attribute models: analytics switched on for its
    store is a deployment error, said plainly (the CLI passes the settings' models)."""
    raise ConfigError("this agent was started without the attribute models (vision.attributes)")


@dataclass(frozen=True, slots=True)
class QueueRule:
    enabled: bool = True
    wait_minutes: float = 5.0
    unhappy_seconds: float = 30.0
    max_length: int = 6
    cooldown_minutes: float = 5.0


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    points: npt.NDArray[np.float64]

    def contains(self, x: float, y: float) -> bool:
        """Even-odd ray casting (the polygon is simple: checked by the server)."""
        inside = False
        pts = self.points
        j = len(pts) - 1
        for i in range(len(pts)):
            (xi, yi), (xj, yj) = pts[i], pts[j]
            if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
                inside = not inside
            j = i
        return inside


@dataclass(frozen=True, slots=True)
class StoreAnalytics:
    """The store's settings as `GET /agent/analytics` gives them."""

    zones: Mapping[str, tuple[Zone, ...]] = field(default_factory=dict)
    demographics: bool = False
    sentiment: bool = False
    queue: QueueRule = QueueRule()

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StoreAnalytics:
        zones = {
            str(camera): tuple(
                Zone(str(z["name"]), np.asarray(z["points"], dtype=np.float64)) for z in found
            )
            for camera, found in dict(body.get("zones") or {}).items()
        }
        rule = dict(body.get("checkout_queue") or {})
        known = set(QueueRule.__dataclass_fields__)
        return cls(
            zones,
            bool(body.get("demographics_enabled")),
            bool(body.get("sentiment_enabled")),
            QueueRule(**{k: v for k, v in rule.items() if k in known}),
        )


@dataclass(slots=True)
class TrackState:
    """What the analytics keep about one live track: times, zones, sampled attributes."""

    camera: str
    first: float
    last: float
    frames: int = 0
    zones: dict[str, list[float]] = field(default_factory=dict)  # name -> [first, last]
    last_sample: float = float("-inf")
    negatives: list[float] = field(default_factory=list)  # every frontal sample (baseline)
    window: deque[tuple[float, float]] = field(default_factory=deque)  # (at, negative)
    unhappy_since: float | None = None
    share: float = 0.0  # of the window above the baseline, at the last sample
    sentiments: Counter[str] = field(default_factory=Counter)
    demographics: Counter[str] = field(default_factory=Counter)
    customer_id: str | None = None


@dataclass(slots=True)
class QueueState:
    lengths: deque[tuple[float, int]] = field(default_factory=deque)
    alerted_at: float = float("-inf")
    last_at: float | None = None  # the previous frame's time (queue length over time)


@dataclass(slots=True)
class QueueHour:
    """One checkout zone's queue over one UTC hour (`footfall.queue_rows`)."""

    people: set[str] = field(default_factory=set)  # track ids: counted, never sent
    longest: int = 0
    person_seconds: float = 0.0
    seconds: float = 0.0

    def values(self) -> dict[str, int]:
        return {
            footfall.QUEUE_PEOPLE: len(self.people),
            footfall.QUEUE_MAX: self.longest,
            "person_seconds": min(round(self.person_seconds), footfall.MAX_VALUE),
            "seconds": min(round(self.seconds), footfall.MAX_VALUE),
        }


def _hour(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC).replace(minute=0, second=0, microsecond=0)


class Analytics:
    """Fed every frame's faces and tracks by the agent; sends alerts and closed hours."""

    def __init__(
        self,
        models: Callable[[], AttributeModels],
        metrics: Registry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models_factory = models
        self._models: AttributeModels | None = None
        self.metrics = metrics or Registry()
        self.clock = clock
        self.settings: StoreAnalytics | None = None  # None until the first fetch: nothing runs
        self._tracks: dict[str, TrackState] = {}
        self._queues: dict[tuple[str, str], QueueState] = {}
        self._counts: dict[footfall.Key, Counter[str]] = {}
        self._queue_hours: dict[tuple[datetime, str], QueueHour] = {}  # (hour, zone)
        self._alerts: deque[dict[str, object]] = deque(maxlen=100)
        self._unsent: list[dict[str, object]] = []  # rows the server was unreachable for
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # the analytics thread and the final flush

    # -- settings ------------------------------------------------------------------

    def refresh(self, client: httpx.Client) -> bool:
        """Fetch the store's zones, switches and queue rule; keep the last ones on failure."""
        try:
            response = client.get(f"{API_PREFIX}/agent/analytics")
            response.raise_for_status()
            settings = StoreAnalytics.from_json(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("analytics settings: not fetched (%s)", type(exc).__name__)
            return False
        with self._lock:
            self.settings = settings
        return True

    def models(self) -> AttributeModels:
        if self._models is None:
            self._models = self._models_factory()
        return self._models

    # -- frames --------------------------------------------------------------------

    def observe(
        self, camera: str, frame: Image, faces: Sequence[Face], tracks: Sequence[Track], at: float
    ) -> None:
        """One frame of `camera`: its faces and the camera's live tracks after the update."""
        settings = self.settings
        zones = settings.zones.get(camera, ()) if settings is not None else ()
        with self._lock:
            live = {t.id for t in tracks}
            for track_id in [i for i, s in self._tracks.items() if s.camera == camera]:
                if track_id not in live:
                    self._end(self._tracks.pop(track_id))
            if settings is None or not zones:
                return
            height, width = frame.shape[:2]
            by_box = {f.box: f for f in faces}
            to_sample: list[tuple[TrackState, Face]] = []
            for track in tracks:
                state = self._tracks.get(track.id)
                if state is None:
                    state = self._tracks[track.id] = TrackState(camera, at, at)
                state.customer_id = getattr(track, "customer_id", None) or state.customer_id
                face = by_box.get(track.box) if track.last_seen == at else None
                if face is None:
                    continue
                state.frames += 1
                state.last = at
                b = face.box
                x, y = (b.x + b.width / 2) / width, (b.y + b.height / 2) / height
                for zone in zones:
                    if zone.contains(x, y):
                        span = state.zones.setdefault(zone.name, [at, at])
                        span[1] = at
                sampling = settings.sentiment or settings.demographics
                frontal = face.quality is not None and abs(face.quality.yaw) <= FRONTAL_YAW
                due = at - state.last_sample >= SAMPLE_SECONDS
                if sampling and state.zones and due and frontal:
                    to_sample.append((state, face))
        if to_sample:
            self._sample(frame, to_sample, at, settings)
        with self._lock:
            self._check_queues(camera, zones, tracks, at, settings)

    def _sample(
        self,
        frame: Image,
        picked: list[tuple[TrackState, Face]],
        at: float,
        settings: StoreAnalytics,
    ) -> None:
        """The attribute models on the picked faces (one batch per model, switches only)."""
        from facecrm.vision.attributes import GENDERS, SENTIMENT_OF, age_band, expression_chip
        from facecrm.vision.keras_onnx import EMOTIONS

        models = self.models()
        faces = [f for _, f in picked]
        self.metrics.inc(
            "facecrm_agent_attribute_faces_total", len(faces), help="faces the attributes ran on"
        )
        negative = [SENTIMENT_OF[e] == "negative" for e in EMOTIONS]
        scores = (
            models.expression_scores([expression_chip(frame, f) for f in faces])
            if settings.sentiment
            else None
        )
        groups: list[str] = []
        if settings.demographics:
            small, large = models.dlib_chips(frame, faces)
            genders, ages = models.gender_scores(small), models.age_years(large)
            groups = [
                f"{age_band(float(a))}|{GENDERS[int(np.argmax(g))]}"
                for g, a in zip(genders, ages, strict=True)
            ]
        with self._lock:
            for i, (state, _) in enumerate(picked):
                state.last_sample = at
                if groups:
                    state.demographics[groups[i]] += 1
                if scores is None:
                    continue
                row = scores[i]
                sums = {s: 0.0 for s in ("smiling", "neutral", "negative")}
                for emotion, p in zip(EMOTIONS, row, strict=True):
                    sums[SENTIMENT_OF[emotion]] += float(p)
                state.sentiments[max(sums, key=lambda s: sums[s])] += 1
                self._unhappiness(state, float(np.sum(row[negative])), at)

    @staticmethod
    def _unhappiness(state: TrackState, score: float, at: float) -> None:
        """Add one frontal sample and update the track's unhappy state (module doc)."""
        if len(state.negatives) < MAX_SAMPLES:
            state.negatives.append(score)
        state.window.append((at, score))
        while state.window and state.window[0][0] < at - WINDOW_SECONDS:
            state.window.popleft()
        baseline = float(np.percentile(state.negatives, BASELINE_PERCENTILE))
        above = [s > baseline + MARGIN for _, s in state.window]
        state.share = sum(above) / len(above)
        unhappy = len(above) >= MIN_SAMPLES and state.share >= UNHAPPY_SHARE
        if not unhappy:
            state.unhappy_since = None
        elif state.unhappy_since is None:
            state.unhappy_since = at

    def _check_queues(
        self,
        camera: str,
        zones: Sequence[Zone],
        tracks: Sequence[Track],
        at: float,
        settings: StoreAnalytics,
    ) -> None:
        rule = settings.queue
        for zone in zones:
            if not zone.name.startswith("checkout_queue:"):
                continue
            queue = self._queues.setdefault((camera, zone.name), QueueState())
            waiting = [
                (at - s.zones[zone.name][0], s, t.id)
                for t in tracks
                if (s := self._tracks.get(t.id)) is not None
                and zone.name in s.zones
                and s.zones[zone.name][1] >= at - 1.0  # in the zone now, not earlier
            ]
            queue.lengths.append((at, len(waiting)))
            while queue.lengths and queue.lengths[0][0] < at - LENGTH_HOLD_SECONDS:
                queue.lengths.popleft()
            self._queue_hour(queue, zone.name, [i for _, _, i in waiting], at)
            if not rule.enabled or at - queue.alerted_at < rule.cooldown_minutes * 60:
                continue
            alert = None
            unhappy = [
                (wait, s)
                for wait, s, _ in waiting
                if settings.sentiment
                and wait >= rule.wait_minutes * 60
                and s.unhappy_since is not None
                and at - s.unhappy_since >= rule.unhappy_seconds
            ]
            held = sum(n >= rule.max_length for _, n in queue.lengths) / len(queue.lengths)
            span = at - queue.lengths[0][0]
            if unhappy:
                wait, state = max(unhappy, key=lambda item: item[0])
                assert state.unhappy_since is not None
                alert = {
                    "trigger": "unhappy",
                    "waiting_seconds": round(wait, 1),
                    "unhappy_seconds": round(at - state.unhappy_since, 1),
                    "confidence": round(state.share, 3),
                    "customer_id": state.customer_id,
                }
            elif span >= LENGTH_HOLD_SECONDS * 0.9 and held >= LENGTH_SHARE:
                longest = max((w for w, _, _ in waiting), default=0.0)
                alert = {
                    "trigger": "length",
                    "waiting_seconds": round(longest, 1),
                    "unhappy_seconds": 0.0,
                    "confidence": round(held, 3),
                    "customer_id": None,
                }
            if alert is not None:
                queue.alerted_at = at
                alert.update(camera=camera, zone=zone.name, queue_length=len(waiting))
                self._alerts.append(alert)
                self.metrics.inc("facecrm_agent_queue_alerts_total", help="queue alerts raised")

    def _queue_hour(self, queue: QueueState, zone: str, present: list[str], at: float) -> None:
        """Add this frame to the zone's queue-length numbers of the hour (module doc)."""
        stats = self._queue_hours.setdefault((_hour(at), zone), QueueHour())
        gap = 0.0 if queue.last_at is None else at - queue.last_at
        queue.last_at = at
        if 0 < gap <= MAX_GAP:
            stats.seconds += gap
            stats.person_seconds += gap * len(present)
        stats.longest = max(stats.longest, len(present))
        stats.people.update(present)

    # -- counters ------------------------------------------------------------------

    def _end(self, state: TrackState) -> None:
        """Fold an ended track into its hour's counters and forget it."""
        settings = self.settings
        if settings is None or state.frames < MIN_FRAMES or not state.zones:
            return
        hour = _hour(state.last)

        def count(zone: str, metric: str, bucket: str) -> None:
            self._counts.setdefault((hour, zone, metric), Counter())[bucket] += 1

        for zone, (first, last) in state.zones.items():
            count(zone, "dwell", footfall.dwell_bucket(last - first))
            if zone == "entrance":
                count(zone, "entries", "all")
            if settings.demographics and state.demographics:
                count(zone, "demographics", state.demographics.most_common(1)[0][0])
            if settings.sentiment and state.sentiments:
                count(zone, "sentiment", state.sentiments.most_common(1)[0][0])

    def finish(self) -> None:
        """End every live track (the run is over): their counters become final."""
        with self._lock:
            for state in self._tracks.values():
                self._end(state)
            self._tracks.clear()

    def closed_rows(self, final: bool = False) -> list[dict[str, object]]:
        """The k-anonymous rows of closed hours (all hours if `final`); taken out of memory."""
        current = _hour(self.clock())
        with self._lock:
            done = {k: v for k, v in self._counts.items() if final or k[0] < current}
            for key in done:
                del self._counts[key]
            hours = self._queue_hours
            queues = {k: v.values() for k, v in hours.items() if final or k[0] < current}
            for hour_zone in queues:
                del self._queue_hours[hour_zone]
        return [
            {"hour": h.isoformat(), "zone": z, "metric": m, "bucket": b, "count": n}
            for h, z, m, b, n in footfall.k_anonymous(done) + footfall.queue_rows(queues)
        ]

    # -- delivery ------------------------------------------------------------------

    def send(self, client: httpx.Client, final: bool = False) -> None:
        """Post waiting alerts, then the closed hours' aggregates (refused ones dropped)."""
        with self._sending:
            self._send(client, final)

    def _send(self, client: httpx.Client, final: bool) -> None:
        while self._alerts:
            alert = self._alerts[0]
            try:
                response = client.post(f"{API_PREFIX}/agent/queue-alerts", json=alert)
            except httpx.HTTPError as exc:
                log.warning("queue alert: server unreachable (%s)", type(exc).__name__)
                return
            self._alerts.popleft()
            if response.is_error:
                log.warning("queue alert refused (%d)", response.status_code)
        rows = (self._unsent + self.closed_rows(final))[:MAX_ROWS]
        self._unsent = []
        if not rows:
            return
        try:
            response = client.post(f"{API_PREFIX}/agent/aggregates", json={"rows": rows})
        except httpx.HTTPError as exc:
            log.warning("aggregates: server unreachable (%s); retried", type(exc).__name__)
            self._unsent = rows
            return
        if response.is_error:
            log.warning("aggregates refused (%d); %d rows dropped", response.status_code, len(rows))
        else:
            self.metrics.inc("facecrm_agent_aggregate_rows_total", len(rows), help="rows sent")

    def run(self, client: httpx.Client, stop: threading.Event) -> None:
        """The agent's analytics thread: settings every minute, alerts at once, hours hourly."""
        next_config = next_flush = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_config:
                self.refresh(client)
                next_config = now + CONFIG_SECONDS
            flush = now >= next_flush
            if flush:
                next_flush = now + FLUSH_SECONDS
            if flush or self._alerts:
                self.send(client)
            stop.wait(1.0)
