"""The vocabulary of anonymous footfall aggregates, shared by the agent and the server.

A row is (hour, zone, metric, bucket, count): one counter of one store's zone for one UTC
hour. The agent builds the rows (`agent.analytics`), the server checks them against this
vocabulary (`crm.analytics.ingest`): an unknown metric or bucket is refused, not stored.

k-anonymity: no row leaves the agent with a count below `MIN_COUNT`. `k_anonymous` merges
the small buckets of one (hour, zone, metric) into `other`; if `other` is still too small
the smallest real bucket is folded into it too, and a group whose total is below
`MIN_COUNT` is dropped whole. A quiet hour therefore reports nothing rather than a count
that could single someone out.

Queue length (`queue_length`, checkout zones only) is not a bucket of people but a few
numbers about one queue over one hour: `people` (distinct tracks that stood in it), `max`
(most at once), `person_seconds` (the integral of its length over time) and `seconds` (how
long it was watched); mean length = person_seconds / seconds. They are statistics *over*
`people` people, so the k rule applies to that count: an hour's queue numbers leave only
when at least `MIN_COUNT` people queued (`queue_rows`), and the server refuses queue rows
without such a `people` row in the same report. A max of 2 among 20 people names no one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from facecrm.vision.attributes import AGE_BANDS, GENDERS, SENTIMENTS

MIN_COUNT = 5
QUEUE_METRIC = "queue_length"
QUEUE_PEOPLE = "people"  # the k-anonymity count of a queue hour
QUEUE_MAX = "max"  # merged by max, not by sum (the server's upsert, the dashboard)
QUEUE_BUCKETS = (QUEUE_PEOPLE, QUEUE_MAX, "person_seconds", "seconds")
MAX_VALUE = 1_000_000  # the server's bound on a count (a row beyond it is refused)
OTHER = "other"
# dwell time in a zone, in seconds: (upper bound, bucket)
DWELL_BUCKETS: tuple[tuple[float, str], ...] = (
    (30, "<30s"),
    (120, "30s-2m"),
    (300, "2-5m"),
    (900, "5-15m"),
    (float("inf"), "15m+"),
)
METRICS: dict[str, frozenset[str]] = {
    "entries": frozenset({"all"}),  # tracks that crossed into `entrance`
    "dwell": frozenset(label for _, label in DWELL_BUCKETS),
    "demographics": frozenset(f"{band}|{g}" for _, band in AGE_BANDS for g in GENDERS),
    "sentiment": frozenset(SENTIMENTS),
    QUEUE_METRIC: frozenset(QUEUE_BUCKETS),
}
DEMOGRAPHIC_METRICS = frozenset({"demographics"})  # need the store's demographics switch
SENTIMENT_METRICS = frozenset({"sentiment"})  # need its sentiment switch

Key = tuple[datetime, str, str]  # (hour, zone, metric)


def dwell_bucket(seconds: float) -> str:
    return next(label for upper, label in DWELL_BUCKETS if seconds < upper)


def known_bucket(metric: str, bucket: str) -> bool:
    if metric not in METRICS:
        return False
    return bucket in METRICS[metric] or (bucket == OTHER and metric != QUEUE_METRIC)


def k_anonymous(
    groups: Mapping[Key, Mapping[str, int]], k: int = MIN_COUNT
) -> list[tuple[datetime, str, str, str, int]]:
    """Rows (hour, zone, metric, bucket, count), every count >= k (see the module doc)."""
    rows: list[tuple[datetime, str, str, str, int]] = []
    for (hour, zone, metric), buckets in sorted(groups.items()):
        kept = {b: n for b, n in buckets.items() if n >= k and b != OTHER}
        other = sum(n for b, n in buckets.items() if b not in kept)
        while 0 < other < k and kept:  # fold the smallest real bucket in
            smallest = min(kept, key=lambda b: (kept[b], b))
            other += kept.pop(smallest)
        if 0 < other < k:
            continue  # the whole group is below k: nothing leaves
        rows.extend((hour, zone, metric, b, n) for b, n in sorted(kept.items()))
        if other:
            rows.append((hour, zone, metric, OTHER, other))
    return rows


def queue_rows(
    hours: Mapping[tuple[datetime, str], Mapping[str, int]], k: int = MIN_COUNT
) -> list[tuple[datetime, str, str, str, int]]:
    """The `queue_length` rows of the (hour, zone) groups that at least k people queued in."""
    return [
        (hour, zone, QUEUE_METRIC, bucket, int(values.get(bucket, 0)))
        for (hour, zone), values in sorted(hours.items())
        if values.get(QUEUE_PEOPLE, 0) >= k
        for bucket in QUEUE_BUCKETS
    ]
