"""Incremental, compact gallery sync for store agents, and server-side decisions.

Why: the whole-gallery JSON (`FaceCRM.gallery_export`) costs every agent the whole chain's
templates, and the server a data-key unwrap per customer, after every single change.

* **Change log.** Every enrollment, backfill, withdrawal, erasure and first visit of a
  customer to a store writes `GalleryChange` rows in its own transaction: ids only, never
  a template. `seq` comes from the `SyncMark` "seq" row, updated under its row lock, so
  on PostgreSQL a change becomes visible only after every lower seq has committed (an
  agent's cursor can never skip a change still in flight). An erasure deletes the
  customer's `add`/`scope` rows and leaves one `remove` row (the opaque customer id).
  `prune` forgets rows older than `sync_log_days`; an agent whose cursor is older gets
  410 `full_resync_required`.
* **Pages.** `page()` answers a cursor: a new agent (no cursor) gets the full gallery in
  pages of template ids, then the log from the snapshot it started at; a running agent
  gets the log since its cursor: removed customers first, then the added templates as
  they are now (a template deleted since is simply absent). Vectors travel as float16
  (half the bytes of float32; similarities move by ~1e-4, far below any decision margin).
  The cursor carries a digest of the decision rule (model ids, threshold, target FMR,
  cascade calibration), the store's mode and readiness: any change of those answers 410,
  so the agent syncs in full with the new rule.
* **Modes** (`Settings.agent_sync_mode`, per store `agent_sync_store_modes`; see
  docs/agent-sync.md): `full` every opted-in customer, `store` the customers enrolled in
  the store or seen there, `server` none; in `store` and `server` modes the agent sends a
  track's template to `decide()` when it does not know the face itself.
* **Plaintext cache.** Decrypted templates are kept as float16 in the process
  (`TemplateCache`) for its life: a data key is unwrapped when a template is first
  served, not once per template per sync. Chosen over an encrypted snapshot because the
  SQLite server already holds every first-model template in memory for search, the
  cache is invalidated by the same change log (a removal seen by any process drops the
  customer's entries at its next sync or decision), and nothing new is written to disk
  that an erasure would have to reach.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from facecrm.crm import accounts, audit, db, readiness
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import FacecrmError, InvalidError
from facecrm.crm.models import (
    Consent,
    FaceTemplate,
    GalleryChange,
    Purpose,
    SyncMark,
    Visit,
)
from facecrm.crm.vault import template_label
from facecrm.crypto import CryptoError
from facecrm.gallery.cascade import Accept, decide
from facecrm.gallery.gallery import assign

if TYPE_CHECKING:
    from facecrm.crm.service import FaceCRM

Mode = Literal["full", "store", "server"]
SEQ, PRUNED = "seq", "pruned"
PAGE_MAX = 10_000  # templates (full phase) or log rows (incremental phase) per page
CURSOR = re.compile(r"^(?:f(\d{1,18})\.(\d{1,18})|i(\d{1,18}))\.([0-9a-f]{12})\Z")
F16 = np.dtype("<f2")
Row = tuple[int, str, str]  # (template id, customer id, model id)


class FullResyncRequired(FacecrmError):
    """The cursor is older than the log, or the decision rule, model or mode changed."""

    status = 410
    reason = "full_resync_required"


# -- the change log ------------------------------------------------------------------


def _mark_insert(session: Session, name: str) -> None:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(SyncMark).values(name=name, value=0).on_conflict_do_nothing())


def _mark(session: Session, name: str) -> int:
    return int(session.scalar(select(SyncMark.value).where(SyncMark.name == name)) or 0)


def _allocate(session: Session, n: int) -> int:
    """The first of `n` new seqs. The row lock taken here is held until commit: a later
    seq cannot commit before this one (no reader's cursor skips a change in flight)."""
    _mark_insert(session, SEQ)
    last = session.execute(
        update(SyncMark)
        .where(SyncMark.name == SEQ)
        .values(value=SyncMark.value + n)
        .returning(SyncMark.value)
    ).scalar_one()
    return int(last) - n + 1


def record_added(session: Session, customer_id: str, template_ids: Sequence[int]) -> None:
    """Templates (of either model) were stored for `customer_id` in this transaction."""
    if not template_ids:
        return
    first = _allocate(session, len(template_ids))
    rows = [
        {"seq": first + n, "kind": "add", "customer_id": customer_id, "template_id": t}
        for n, t in enumerate(template_ids)
    ]
    session.execute(insert(GalleryChange), rows)


def record_removed(session: Session, customer_id: str) -> None:
    """Every template of `customer_id` went (withdrawal, erasure, retention): their earlier
    rows go too, and one `remove` row (the opaque id) tells the agents."""
    session.execute(delete(GalleryChange).where(GalleryChange.customer_id == customer_id))
    seq = _allocate(session, 1)
    session.add(GalleryChange(seq=seq, kind="remove", customer_id=customer_id))


def record_visit(session: Session, customer_id: str, store_id: str) -> None:
    """After a visit was added: the customer's first visit to `store_id` puts them in the
    store's scope (store-scoped agents fetch their templates). Only customers with
    templates matter: others have nothing to sync."""
    first = (
        session.scalar(
            select(func.count())
            .select_from(Visit)
            .where(Visit.customer_id == customer_id, Visit.store_id == store_id)
        )
        == 1
    )
    has_face = session.scalar(
        select(FaceTemplate.id).where(FaceTemplate.customer_id == customer_id).limit(1)
    )
    if first and has_face is not None:
        seq = _allocate(session, 1)
        session.add(
            GalleryChange(seq=seq, kind="scope", customer_id=customer_id, store_id=store_id)
        )


def prune(session: Session, days: int, now: datetime | None = None) -> int:
    """Forget log rows older than `days`; agents behind them sync in full. Returns how many."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    below = session.scalar(select(func.max(GalleryChange.seq)).where(GalleryChange.at < cutoff))
    if below is None:
        return 0
    _mark_insert(session, PRUNED)
    session.execute(
        update(SyncMark).where(SyncMark.name == PRUNED, SyncMark.value < below).values(value=below)
    )
    result = session.execute(delete(GalleryChange).where(GalleryChange.seq <= below))
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- the plaintext cache -------------------------------------------------------------


class TemplateCache:
    """Decrypted templates (float16) for the life of the server process.

    Keyed by template id with the owner checked on every read (an id of a deleted row
    that the database reuses for someone else is a miss, never their vector). `sweep`
    drops customers removed since the last sweep by reading the change log, so a removal
    made by another server process reaches this one at its next sync or decision.
    """

    def __init__(self) -> None:
        self._rows: dict[int, tuple[str, npt.NDArray[np.float16]]] = {}
        self._by_customer: dict[str, set[int]] = {}
        self._seen = -1  # the log seq swept up to (-1: not yet)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def forget(self, customer_id: str) -> None:
        with self._lock:
            for template_id in self._by_customer.pop(customer_id, set()):
                self._rows.pop(template_id, None)

    def sweep(self, session: Session) -> None:
        """Drop customers removed (by any process) since the last sweep."""
        if self._seen < 0:  # a new cache holds nothing yet: start from here
            self._seen = _mark(session, SEQ)
            return
        head = _mark(session, SEQ)  # first: every seq up to it has committed
        removed = session.scalars(
            select(GalleryChange.customer_id).where(
                GalleryChange.seq > self._seen,
                GalleryChange.seq <= head,
                GalleryChange.kind == "remove",
            )
        ).all()
        for customer_id in removed:
            self.forget(customer_id)
        self._seen = max(self._seen, head)

    def vectors(
        self, crm: FaceCRM, session: Session, rows: Sequence[Row]
    ) -> list[npt.NDArray[np.float16]]:
        """The float16 vectors of `rows` (template id, customer id, model id), decrypting
        the misses with one data-key unwrap per customer."""
        with self._lock:
            hits = {t: self._rows.get(t) for t, _, _ in rows}
        missing = [t for t, c, _ in rows if (hit := hits[t]) is None or hit[0] != c]
        if missing:
            found: dict[int, tuple[str, npt.NDArray[np.float16]]] = {}
            for start in range(0, len(missing), 1000):
                chunk = missing[start : start + 1000]
                low, high = min(chunk), max(chunk)
                # a full sync misses whole id ranges: two bound values instead of a thousand
                dense = high - low < 2 * len(chunk)
                sealed = session.execute(
                    select(
                        FaceTemplate.id,
                        FaceTemplate.customer_id,
                        FaceTemplate.model_id,
                        FaceTemplate.vector,
                    ).where(
                        FaceTemplate.id.between(low, high) if dense else FaceTemplate.id.in_(chunk)
                    )
                ).all()
                wanted = set(chunk)
                sealed = [row for row in sealed if row[0] in wanted]
                ciphers = crm.vault.ciphers(session, {owner for _, owner, _, _ in sealed})
                for template_id, owner, model_id, blob in sealed:
                    cipher = ciphers.get(owner)
                    if cipher is None:
                        raise CryptoError(f"customer {owner} has no data key")
                    plain = cipher.open(blob, template_label(model_id))
                    found[template_id] = (owner, np.frombuffer(plain, np.float32).astype(F16))
            with self._lock:
                for template_id, (owner, vector) in found.items():
                    self._rows[template_id] = (owner, vector)
                    self._by_customer.setdefault(owner, set()).add(template_id)
            hits.update(found)
        out = []
        for template_id, _, _ in rows:
            hit = hits[template_id]
            if hit is None:
                raise LookupError(f"template {template_id} vanished during the sync")
            out.append(hit[1])
        return out


def _store(principal: Principal) -> str | None:
    """The agent's store, or None for a chain-wide caller (the CLI's SYSTEM, an admin).

    A scoped principal with no store is refused by `accounts.device_store`: read as "no
    store" it would get the chain-wide gallery and skip its store's readiness.
    """
    return None if principal.stores is None else accounts.device_store(principal)


def _unit(vector: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.float32]:
    """A finite, non-zero vector scaled to unit length (what templates are)."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector)) if np.all(np.isfinite(vector)) else math.nan
    if not norm > 0 or not math.isfinite(norm) or not 1 <= len(vector) <= 4096:
        raise InvalidError(f"{name}: not a usable template", reason="bad_template")
    unit: npt.NDArray[np.float32] = vector / norm
    return unit


# -- pages ---------------------------------------------------------------------------


@dataclass(slots=True)
class Packed:
    """Templates of one model: ids, owners and their float16 vectors (one row each)."""

    ids: list[int] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)
    vectors: list[npt.NDArray[np.float16]] = field(default_factory=list)

    def wire(self) -> dict[str, object]:
        data = np.stack(self.vectors).astype(F16).tobytes() if self.vectors else b""
        return {
            "dim": len(self.vectors[0]) if self.vectors else 0,
            "ids": self.ids,
            "customers": self.customers,
            "vectors": base64.b64encode(data).decode(),
        }


@dataclass(slots=True)
class Page:
    mode: Mode
    cursor: str
    more: bool  # ask again at once (more pages, or the log after a full sync)
    reset: bool  # the first page of a full sync: start from an empty gallery
    rule: dict[str, object] | None  # the decision rule (on `reset` pages only)
    removed: list[str]
    models: dict[str, Packed]


@dataclass(frozen=True, slots=True)
class Cursor:
    full: bool
    seq: int  # full: the log seq the snapshot started at; incremental: the last applied
    after: int  # full: the last template id sent
    digest: str

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        m = CURSOR.match(raw)
        if m is None:
            raise InvalidError("malformed sync cursor", reason="bad_cursor")
        if m.group(1) is not None:
            return cls(True, int(m.group(1)), int(m.group(2)), m.group(4))
        return cls(False, int(m.group(3)), 0, m.group(4))

    def __str__(self) -> str:
        head = f"f{self.seq}.{self.after}" if self.full else f"i{self.seq}"
        return f"{head}.{self.digest}"


class GallerySync:
    """The agents' side of the gallery: pages of changes, and server-side decisions."""

    def __init__(self, crm: FaceCRM) -> None:
        self.crm = crm
        self.cache = TemplateCache()
        self._dims: dict[str, int] = {}

    def mode(self, store_id: str | None) -> Mode:
        settings = self.crm.settings
        return settings.agent_sync_store_modes.get(store_id or "", settings.agent_sync_mode)

    def models(self) -> list[str]:
        """The model ids an agent holds templates of: the first model's, then the second's."""
        cascade = self.crm.cascade
        return [self.crm.model_id] + ([cascade.second.model_id] if cascade is not None else [])

    def rule(self) -> dict[str, object]:
        crm = self.crm
        cascade = crm.cascade
        return {
            "model_id": crm.model_id,
            "models": self.models(),
            "threshold": crm.threshold,
            "target_fmr": crm.settings.target_fmr,
            "cascade": None if cascade is None else cascade.to_json(),
        }

    def _digest(self, mode: Mode, store_id: str | None, paused: bool) -> str:
        state = {"rule": self.rule(), "mode": mode, "store": store_id, "paused": paused}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:12]

    def page(self, principal: Principal, cursor: str | None, limit: int) -> Page:
        """The next page for the agent at `cursor` (None: a new agent, full sync)."""
        principal.require(Permission.AGENT)
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidError(f"limit must be 1..{PAGE_MAX}", reason="bad_limit")
        parsed = Cursor.parse(cursor) if cursor is not None else None
        store_id = _store(principal)
        mode = self.mode(store_id)
        with db.transaction(self.crm.sessions) as session:
            paused = not readiness.allows_recognition(session, self.crm.settings, store_id)
            digest = self._digest(mode, store_id, paused)
            head, pruned = _mark(session, SEQ), _mark(session, PRUNED)
            if parsed is not None:
                if parsed.seq > head:
                    raise InvalidError("the sync cursor is ahead of the log", reason="bad_cursor")
                if parsed.digest != digest or parsed.seq < pruned:
                    raise FullResyncRequired(
                        "the decision rule, model or mode changed, or the cursor is older"
                        " than the change log: sync in full (start without a cursor)"
                    )
            self.cache.sweep(session)
            holds = mode != "server" and not paused
            packed = {m: Packed() for m in self.models()}
            removed: list[str] = []
            if parsed is None or parsed.full:
                snapshot = head if parsed is None else parsed.seq
                after = 0 if parsed is None else parsed.after
                rows = (
                    self._select(session, store_id, mode, FaceTemplate.id > after, limit)
                    if holds
                    else []
                )
                done = len(rows) < limit
                last = rows[-1][0] if rows else after
                next_cursor = Cursor(not done, snapshot, 0 if done else last, digest)
                more = True  # the rest, or the log since the snapshot
            else:
                changes = session.execute(
                    select(
                        GalleryChange.seq,
                        GalleryChange.kind,
                        GalleryChange.customer_id,
                        GalleryChange.template_id,
                        GalleryChange.store_id,
                    )
                    .where(GalleryChange.seq > parsed.seq)
                    .order_by(GalleryChange.seq)
                    .limit(limit)
                ).all()
                removed = sorted({c for _, kind, c, _, _ in changes if kind == "remove"})
                added = [t for _, kind, _, t, _ in changes if kind == "add" and t is not None]
                scoped = [c for _, kind, c, _, s in changes if kind == "scope" and s == store_id]
                rows = self._changed(session, store_id, mode, added, scoped) if holds else []
                last = changes[-1][0] if changes else parsed.seq
                next_cursor = Cursor(False, last, 0, digest)
                more = len(changes) == limit
            for (template_id, owner, model_id), vector in zip(
                rows, self.cache.vectors(self.crm, session, rows), strict=True
            ):
                target = packed[model_id]
                target.ids.append(template_id)
                target.customers.append(owner)
                target.vectors.append(vector)
            if rows or removed or parsed is None:  # not the polls that bring nothing
                audit.record(
                    session,
                    principal,
                    "gallery_sync",
                    None,
                    store_id,
                    templates=len(rows),
                    removed=len(removed),
                    full=parsed is None or parsed.full,
                    mode=mode,
                )
        return Page(
            mode=mode,
            cursor=str(next_cursor),
            more=more,
            reset=parsed is None,
            rule={**self.rule(), "paused": paused} if parsed is None else None,
            removed=removed,
            models=packed,
        )

    def _select(
        self,
        session: Session,
        store_id: str | None,
        mode: Mode,
        where: ColumnElement[bool],
        limit: int | None = None,
    ) -> list[Row]:
        """(template id, customer id, model id) of the agent's models, by template id; in
        `store` mode only customers enrolled in the store or seen there."""
        stmt = select(FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.model_id).where(
            FaceTemplate.model_id.in_(self.models()), where
        )
        if mode == "store":
            visited = select(Visit.customer_id).where(Visit.store_id == store_id)
            enrolled = select(Consent.customer_id).where(
                Consent.store_id == store_id,
                Consent.purpose == Purpose.IN_STORE_RECOGNITION,
                Consent.withdrawn_at.is_(None),
            )
            stmt = stmt.where(FaceTemplate.customer_id.in_(visited.union(enrolled)))
        rows = session.execute(stmt.order_by(FaceTemplate.id).limit(limit))
        return [(int(t), c, m) for t, c, m in rows]

    def _changed(
        self,
        session: Session,
        store_id: str | None,
        mode: Mode,
        added: Collection[int],
        scoped: Collection[str],
    ) -> list[Row]:
        """The named templates and the newly scoped customers' templates, as they are now."""
        if not added and not scoped:
            return []
        found: dict[int, Row] = {}
        ids = list(added)
        for start in range(0, len(ids), 1000):
            chunk = FaceTemplate.id.in_(ids[start : start + 1000])
            found.update((r[0], r) for r in self._select(session, store_id, mode, chunk))
        if scoped:
            owners = FaceTemplate.customer_id.in_(list(scoped))
            found.update((r[0], r) for r in self._select(session, store_id, mode, owners))
        return [found[t] for t in sorted(found)]

    # -- server-side decisions -------------------------------------------------------

    def _dim(self, session: Session, model_id: str) -> int | None:
        """The length of `model_id`'s templates (None: none stored yet)."""
        if model_id not in self._dims:
            row = session.execute(
                select(FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.model_id)
                .where(FaceTemplate.model_id == model_id)
                .limit(1)
            ).first()
            if row is None:
                return None
            rows = [(int(row[0]), row[1], row[2])]
            self._dims[model_id] = len(self.cache.vectors(self.crm, session, rows)[0])
        return self._dims[model_id]

    def decide(
        self,
        principal: Principal,
        first: npt.NDArray[np.float32],
        second: npt.NDArray[np.float32] | None,
    ) -> tuple[str, float] | None:
        """Known (customer, first-model similarity) or None for one track's template(s),
        by the rule of the agent's local decision and of `identify`. A match is audited
        like an identification; an unknown leaves nothing (no row, no log line, no count)."""
        principal.require(Permission.AGENT)
        crm = self.crm
        cascade = crm.cascade
        store_id = _store(principal)
        first = _unit(first, "template")
        second = None if second is None or cascade is None else _unit(second, "second")
        with db.transaction(crm.sessions) as session:
            readiness.require(session, crm.settings, store_id)
            self.cache.sweep(session)
            dim = self._dim(session, crm.model_id)
            if dim is None:  # nobody is enrolled
                return None
            second_dim = None if cascade is None else self._dim(session, cascade.second.model_id)
            if len(first) != dim or (second is not None and len(second) != second_dim):
                raise InvalidError("a template of the wrong length", reason="bad_template")
            (candidates,) = crm.gallery.candidates(session, first[None, :])
            match: tuple[str, float] | None = None
            if cascade is None:
                (decision,) = assign([candidates], crm.threshold)
                if decision.match is not None:
                    match = (decision.match.customer_id, decision.match.similarity)
            else:

                def scores(ids: Sequence[str]) -> dict[str, float]:
                    if second is None or not ids:
                        return {}
                    rows = [
                        (int(t), c, m)
                        for t, c, m in session.execute(
                            select(
                                FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.model_id
                            ).where(
                                FaceTemplate.customer_id.in_(list(ids)),
                                FaceTemplate.model_id == cascade.second.model_id,
                            )
                        )
                    ]
                    best: dict[str, float] = {}
                    for (_, owner, _), v in zip(
                        rows, self.cache.vectors(crm, session, rows), strict=True
                    ):
                        score = float(v.astype(np.float32) @ second)
                        best[owner] = max(best.get(owner, -math.inf), score)
                    return best

                first_scores = {c.customer_id: c.similarity for c in candidates}
                outcome = decide(
                    first_scores, scores, cascade, crm.settings.target_fmr, crm.threshold
                )
                if isinstance(outcome, Accept):
                    match = (outcome.customer, outcome.first)
            if match is not None:
                audit.record(
                    session,
                    principal,
                    "identify",
                    match[0],
                    store_id,
                    similarity=round(match[1], 4),
                    via="agent_decide",
                )
        return match
