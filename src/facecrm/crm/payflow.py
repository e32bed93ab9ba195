"""Face checkout's state machine (issue 14, docs/face-checkout.md): frames, the smile
challenge, step-up, the signed authorisation and the POS's confirmation.

`crm.payments` holds who may pay (profiles, consents) and opens sessions; this module moves
a session through `looking -> challenge -> step_up -> authorised | declined`.

Decision rules (why each is so):

* **Whole gallery, stricter point.** A burst's faces are decided 1:N against the *whole*
  recognition gallery by the cascade (`gallery.cascade.decide`) at `pay_target_fmr`
  (1e-5: the cascade's calibrated impostor model puts the common threshold at g = 3.15
  impostor z, against 2.80 for recognition's 1e-3; see the notes). Deciding among payment
  customers only would let a close *non-payment* look-alike go unseen; here any second
  customer within the calibration's ambiguity margin declines `ambiguous_match`, and a
  face that is a customer without payment declines `not_enrolled_for_payment` (a stranger
  gets the same answer: nothing tells them apart, nothing about them is kept).
* **Same person throughout.** In `challenge` every frame's face must again be the customer
  found in `looking`, decided 1:N at the recognition operating point (a smile moves a
  template; the strict point was met already): another customer or two close ones
  decline `ambiguous_match`; a face that is nobody's declines `liveness_failed` (a face
  swapped in front of the camera is a presentation attack, not a look-alike).
* **Liveness** is the injected `vision.liveness.LivenessStage` (pluggable; the server's
  default is `vision.liveness.default_liveness_stage`): `still_image`,
  `screen_or_print`, `too_few_frames` decline `liveness_failed`; `no_smile`,
  `smiled_early` decline `no_smile`.
* **Limits** (`payable` again, the lock, the profile's currency, per transaction, a
  rolling 24 h sum of authorised amounts) decline `limit_exceeded`.
* **Step-up** when the customer's lead over the next customer is below
  `pay_step_up_margin_z`, when more than `pay_step_up_gallery` customers are set up for
  payment, or the amount is above `pay_step_up_amount`. Wrong digits count on the session
  (`pay_step_up_attempts`) and on the customer (`pay_lock_failures` in a row, across
  sessions, lock face payment for `pay_lock_minutes` and alert the store's managers).

Idempotency: a session is locked for each change (`SELECT ... FOR UPDATE`), the vision work
runs outside any transaction and its result is applied only if the session is still in the
state it was read in (else 409 `session_changed`); one authorisation is ever signed per
session. Retried create, cancel and confirm calls return the same answer; a frames or
step-up call on a session that moved on is 409 and `GET` gives the answer.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facecrm.crm import activity, audit, customers, db, payments
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, FacecrmError, InvalidError, NotFoundError
from facecrm.crm.models import PaymentProfile, PaySession, utcnow
from facecrm.crm.payments import DeclineReason, SessionState
from facecrm.crm.service import FaceCRM
from facecrm.gallery.cascade import Accept, Unknown
from facecrm.keys import derived_key
from facecrm.vision.image import decode_image
from facecrm.vision.liveness import LivenessFailure, LivenessStage, TimedFace

MAX_BURST_FRAMES = 12
MAX_BURST_BYTES = 6 * 1024 * 1024
MAX_AT_MS = 120_000
NO_FACE_BURSTS = 3  # bursts without a face in `looking` before `no_face`
SMILE_AFTER_MS = (800, 2000)  # the random prompt moment, inclusive
KEY_PURPOSE = "pay-authorisation-ed25519"  # `keys.derived_key` purpose of the signing key
ALERT_KIND = "payment_locked"
MAX_ITEMS = 100
MAX_REFERENCE = 200
PRINTABLE = re.compile(r"^[\x20-\x7e]+\Z")

S = SessionState
LIVENESS_REASONS: dict[LivenessFailure, DeclineReason] = {
    LivenessFailure.STILL_IMAGE: DeclineReason.LIVENESS_FAILED,
    LivenessFailure.SCREEN_OR_PRINT: DeclineReason.LIVENESS_FAILED,
    LivenessFailure.TOO_FEW_FRAMES: DeclineReason.LIVENESS_FAILED,
    LivenessFailure.NO_SMILE: DeclineReason.NO_SMILE,
    LivenessFailure.SMILED_EARLY: DeclineReason.NO_SMILE,
}

LivenessFactory = Callable[[], LivenessStage]
LockAlert = Callable[[str, str, str], None]  # (store_id, customer_id, till)


MIN_OWN_FRAMES_AFTER_PROMPT = 1  # frames of the customer after "smile now" (`_challenge`)


class BurstTooLarge(FacecrmError):
    """A burst over `MAX_BURST_FRAMES` frames or `MAX_BURST_BYTES` bytes (413)."""

    status = 413
    reason = "burst_too_large"


class SessionClosed(ConflictError):
    """Frames or step-up for a session that is final (409 `session_final`, or
    `session_expired` when it ran out of time): the till starts a new session."""

    reason = "session_final"


@dataclass(frozen=True, slots=True)
class Frame:
    """One uploaded frame of a burst: the till's capture time and the encoded image."""

    at_ms: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a POS sees of a session (never the customer's name)."""

    id: str
    store_id: str
    till: str
    amount: int
    currency: str
    state: str
    decline_reason: str | None
    created_at: datetime
    expires_at: datetime
    smile_after_ms: int | None
    step_up_attempts_left: int | None
    authorisation: dict[str, Any] | None
    confirmed: bool
    purchase_id: int | None


@dataclass(frozen=True, slots=True)
class ConfirmedItem:
    sku: str
    name: str
    quantity: int
    unit_price: int


def check_burst(frames: Sequence[Frame], max_upload_bytes: int) -> None:
    """The burst's shape, before anything is decoded (413 over the caps, 422 otherwise)."""
    if len(frames) > MAX_BURST_FRAMES:
        raise BurstTooLarge(f"a burst has at most {MAX_BURST_FRAMES} frames")
    if sum(len(f.data) for f in frames) > MAX_BURST_BYTES or any(
        len(f.data) > max_upload_bytes for f in frames
    ):
        raise BurstTooLarge(
            f"a burst is at most {MAX_BURST_BYTES} bytes, each frame at most {max_upload_bytes}"
        )
    if not frames:
        raise InvalidError("a burst needs at least one frame", reason="bad_burst")
    times = [f.at_ms for f in frames]
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_AT_MS for t in times):
        raise InvalidError(f"at_ms: whole milliseconds, 0 to {MAX_AT_MS}", reason="bad_burst")
    if any(b < a for a, b in itertools.pairwise(times)):
        raise InvalidError("at_ms must not decrease across the burst", reason="bad_burst")


def canonical(payload: dict[str, Any]) -> bytes:
    """The signed bytes: sorted keys, no spaces, UTF-8 (what a verifier rebuilds)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class PayFlow:
    """The payment sessions' state machine over a `FaceCRM` (its pipeline, gallery and
    cascade), with the liveness stage made by `liveness` on first use and `on_lock`
    called after a customer's face payment got locked (the server raises a store alert)."""

    def __init__(
        self,
        crm: FaceCRM,
        liveness: LivenessFactory | None = None,
        on_lock: LockAlert | None = None,
    ) -> None:
        self.crm = crm
        self._liveness_factory = liveness or self._default_liveness
        self._liveness: LivenessStage | None = None
        self.on_lock = on_lock
        seed = derived_key(crm.settings, KEY_PURPOSE)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    def _default_liveness(self) -> LivenessStage:
        # imported here: the stage loads the expression model, which only tills need
        from facecrm.vision.liveness import default_liveness_stage

        return default_liveness_stage(self.crm.settings)

    @property
    def stage(self) -> LivenessStage:
        if self._liveness is None:
            self._liveness = self._liveness_factory()
        return self._liveness

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 key that verifies authorisations."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    # -- reading ---------------------------------------------------------------------

    def get(
        self, principal: Principal, session_id: str, now: datetime | None = None
    ) -> SessionView:
        with db.transaction(self.crm.sessions) as session:
            return self.view(payments.get_session(session, principal, session_id, now), now)

    def charge_deadline(self, row: PaySession) -> datetime | None:
        """Until when the POS may charge this session's authorisation (None: none)."""
        if row.authorised_at is None:
            return None
        seconds = self.crm.settings.pay_authorisation_seconds
        return _aware(row.authorised_at) + timedelta(seconds=seconds)

    def view(self, row: PaySession, now: datetime | None = None) -> SessionView:
        """The session as its till sees it. The signed authorisation (it names the
        customer's wallet token) is shown only while it can be charged and is not yet
        confirmed: a later read, by anyone who got hold of the device key, learns none."""
        state = SessionState(row.state)
        left = None
        if state == S.STEP_UP:
            left = max(0, self.crm.settings.pay_step_up_attempts - row.step_up_attempts)
        deadline = self.charge_deadline(row)
        live = deadline is not None and (now or utcnow()) < deadline
        shown = row.authorisation if live and row.confirmed_at is None else None
        return SessionView(
            id=row.id,
            store_id=row.store_id,
            till=row.till,
            amount=row.amount,
            currency=row.currency,
            state=row.state,
            decline_reason=row.decline_reason,
            created_at=row.created_at,
            expires_at=row.expires_at,
            smile_after_ms=row.smile_after_ms if state == S.CHALLENGE else None,
            step_up_attempts_left=left,
            authorisation=json.loads(shown) if shown else None,
            confirmed=row.confirmed_at is not None,
            purchase_id=row.purchase_id,
        )

    def _open(
        self, principal: Principal, session_id: str, wanted: Sequence[SessionState], now: datetime
    ) -> PaySession:
        """The session as it is (expiry applied and committed), refused when not in
        one of the `wanted` states."""
        with db.transaction(self.crm.sessions) as session:
            row = payments.get_session(session, principal, session_id, now)
        _require(row, wanted)
        return row

    def _lock(
        self, session: Session, principal: Principal, snapshot: PaySession, now: datetime
    ) -> PaySession:
        """The session row, locked for this transaction, still as `snapshot` saw it."""
        row = _locked_row(session, snapshot.id)
        if payments.expire(session, principal, row, now):
            raise _Expired(row.id)
        if row.state != snapshot.state or row.step_up_attempts != snapshot.step_up_attempts:
            raise ConflictError(
                "the session changed while this request was handled: read it again",
                reason="session_changed",
            )
        return row

    # -- frames ------------------------------------------------------------------------

    def frames(
        self,
        principal: Principal,
        session_id: str,
        frames: Sequence[bytes],
        at_ms: Sequence[int],
        now: datetime | None = None,
    ) -> SessionView:
        """One burst: in `looking`, who is there; in `challenge`, same person, live and
        smiling after the prompt, then limits and step-up rules. Audited
        `pay_session_frames` (counts, scores and the outcome; never an image)."""
        settings = self.crm.settings
        if max(len(frames), len(at_ms)) > MAX_BURST_FRAMES:  # first: never truncated
            raise BurstTooLarge(f"a burst has at most {MAX_BURST_FRAMES} frames")
        if len(frames) != len(at_ms):
            raise InvalidError("one at_ms per frame", reason="bad_burst")
        burst = [Frame(t, data) for t, data in zip(at_ms, frames, strict=False)]
        check_burst(burst, settings.max_upload_bytes)
        now = now or utcnow()
        snapshot = self._open(principal, session_id, (S.LOOKING, S.CHALLENGE), now)
        images = [decode_image(frame.data, settings) for frame in burst]  # all, or nothing
        timed = []
        for frame, image in zip(burst, images, strict=True):
            faces = self.crm.pipeline.faces(image, embed=False)[:1]  # the largest face
            if faces:
                timed.append(TimedFace(frame.at_ms, image, self.crm.pipeline.embed(faces)[0]))
        try:
            with db.transaction(self.crm.sessions, write_lock=True) as session:
                row = self._lock(session, principal, snapshot, now)  # first: one lock order
                if snapshot.state == S.LOOKING:
                    outcome = self._looking(session, timed)
                else:
                    outcome = self._challenge(session, row, timed, now)
                self._apply(session, row, outcome, now)
                audit.record(
                    session,
                    principal,
                    "pay_session_frames",
                    row.customer_id,
                    row.store_id,
                    session_id=row.id,
                    frames=len(burst),
                    faces=len(timed),
                    state=row.state,
                    reason=row.decline_reason,
                    **outcome.scores,
                )
                return self.view(row, now)
        except _Expired:
            raise SessionClosed("the session expired", reason="session_expired") from None

    def _looking(self, session: Session, timed: Sequence[TimedFace]) -> _Outcome:
        if not timed:
            return _Outcome(no_face=True)
        fmr = self.crm.settings.pay_target_fmr
        decided = [self._decide(session, t, fmr) for t in timed]
        decisions = [d for d, _ in decided]
        accepted = {d.customer for d in decisions if isinstance(d, Accept)}
        if len(accepted) > 1 or any(
            isinstance(d, Unknown) and d.reason == "ambiguous" for d in decisions
        ):
            return _Outcome(DeclineReason.AMBIGUOUS_MATCH)
        if not accepted:
            return _Outcome(DeclineReason.NOT_ENROLLED_FOR_PAYMENT)
        (customer_id,) = accepted
        lead = min(self._lead(d, first) for d, first in decided if isinstance(d, Accept))
        why = self._payable(session, customer_id)
        if why is not None:
            return _Outcome(why, customer_id=customer_id)
        low, high = SMILE_AFTER_MS
        smile = low + secrets.randbelow(high - low + 1)
        return _Outcome(
            to=S.CHALLENGE,
            customer_id=customer_id,
            smile_after_ms=smile,
            margin=lead,
            scores={"margin_z": round(min(lead, 99.0), 3)},
        )

    def _challenge(
        self, session: Session, snapshot: PaySession, timed: Sequence[TimedFace], now: datetime
    ) -> _Outcome:
        customer_id = snapshot.customer_id
        if customer_id is None:  # erased since `looking`
            return _Outcome(DeclineReason.NOT_ENROLLED_FOR_PAYMENT)
        fmr = self.crm.settings.target_fmr
        prompt = int(snapshot.smile_after_ms or 0)
        ours: list[int] = []  # capture times of the frames accepted as this customer
        for face in timed:
            decision, first = self._decide(session, face, fmr)
            if isinstance(decision, Accept):
                if decision.customer != customer_id:
                    return _Outcome(DeclineReason.AMBIGUOUS_MATCH)
                ours.append(face.at_ms)
            elif decision.reason == "ambiguous":
                return _Outcome(DeclineReason.AMBIGUOUS_MATCH)
            elif not (
                decision.second_stage_run
                and first
                and max(first, key=first.__getitem__) == customer_id
            ):  # nobody near: a face swapped in front of the camera
                return _Outcome(DeclineReason.LIVENESS_FAILED, scores={"identity_lost": 1.0})
        # A smile, a turn or motion blur can drop a frame of the right person below the
        # payment threshold: tolerated (in a third of the burst at most) only when the
        # first model still ranks the customer first and close enough for the second
        # model to be asked -- a stranger's face is refused above.
        # Frames after the prompt must be theirs too (the liveness stage needs two there,
        # with the onset on two in a row), so the smile judged below is the customer's,
        # not a stranger's swapped in after `looking`.
        after = sum(1 for t in ours if t >= prompt)
        if 3 * len(ours) < 2 * len(timed) or after < MIN_OWN_FRAMES_AFTER_PROMPT:
            lost = {"identity_lost": 1.0, "identity_frames": float(len(ours))}
            return _Outcome(DeclineReason.LIVENESS_FAILED, scores=lost)
        verdict = self.stage.assess(timed, prompt)
        scores: dict[str, Any] = {
            f"liveness_{k}": round(float(v), 4) for k, v in verdict.scores.items()
        }
        if verdict.failure is not None:
            scores["liveness_failure"] = verdict.failure.value
            return _Outcome(LIVENESS_REASONS[verdict.failure], scores=scores)
        why = self._payable(session, customer_id) or self._limits(
            session, customer_id, snapshot.amount, snapshot.currency, now
        )
        if why is not None:
            return _Outcome(why, scores=scores)
        if self._needs_step_up(session, snapshot):
            return _Outcome(to=S.STEP_UP, scores=scores)
        return _Outcome(to=S.AUTHORISED, scores=scores)

    def _apply(self, session: Session, row: PaySession, outcome: _Outcome, now: datetime) -> None:
        if outcome.no_face:
            row.no_face_bursts += 1
            if row.no_face_bursts >= NO_FACE_BURSTS:
                payments.advance(row, S.DECLINED, DeclineReason.NO_FACE)
        elif outcome.decline is not None:
            if outcome.customer_id is not None and row.customer_id is None:
                row.customer_id = outcome.customer_id
            payments.advance(row, S.DECLINED, outcome.decline)
        elif outcome.to == S.CHALLENGE:
            payments.advance(row, S.CHALLENGE)
            row.customer_id = outcome.customer_id
            row.smile_after_ms = outcome.smile_after_ms
            row.match_margin_z = min(outcome.margin, 1e6)
        elif outcome.to == S.STEP_UP:
            payments.advance(row, S.STEP_UP)
        elif outcome.to == S.AUTHORISED:
            self._authorise(session, row, now)
        session.flush()

    # -- the decision rules --------------------------------------------------------------

    def _decide(
        self, session: Session, face: TimedFace, fmr: float
    ) -> tuple[Accept[str] | Unknown, dict[str, float]]:
        """1:N of one face against the whole recognition gallery at `fmr`, and the
        first-model scores it saw. Without the cascade's second opinion nothing is
        authorised (`ambiguous`)."""
        crm = self.crm
        if crm.cascade is None:
            return Unknown("ambiguous", second_stage_run=False), {}
        (probe,) = crm._probes(face.image, [face.face])
        (candidates,) = crm.gallery.candidates(session, probe.first[None, :])
        first = {c.customer_id: c.similarity for c in candidates}
        threshold = crm.calibration.threshold(fmr)
        return crm.cascade_decision(session, probe, candidates, fmr, threshold), first

    def _lead(self, decision: Accept[str], first: dict[str, float]) -> float:
        """How far the customer is ahead of the next customer, in g units: the cascade's
        margin, or -- when the next one was too far to be scored by the second model --
        the customer's g less the next one's first-model z (an upper bound of its g)."""
        cascade = self.crm.cascade
        assert cascade is not None
        others = [cascade.first.z(s) for k, s in first.items() if k != decision.customer]
        bound = decision.score_z - max(others) if others else float("inf")
        return min(decision.margin_z, bound)

    def _payable(self, session: Session, customer_id: str) -> DeclineReason | None:
        customer = customers.load(session, customer_id)
        profile = session.get(PaymentProfile, customer_id, with_for_update=True)
        why = payments.payable(customer, profile)
        if why is None and profile is not None and _locked(profile, utcnow()):
            return DeclineReason.STEP_UP_FAILED
        return why

    def _limits(
        self, session: Session, customer_id: str, amount: int, currency: str, now: datetime
    ) -> DeclineReason | None:
        """Currency and per-transaction limit of the profile; the rolling 24 h sum of
        the customer's authorised amounts plus this one within the daily limit."""
        profile = session.get(PaymentProfile, customer_id)
        assert profile is not None
        if currency != profile.currency or amount > profile.limit_per_transaction:
            return DeclineReason.LIMIT_EXCEEDED
        spent = session.scalar(
            select(func.coalesce(func.sum(PaySession.amount), 0)).where(
                PaySession.customer_id == customer_id,
                PaySession.state == S.AUTHORISED.value,
                PaySession.currency == currency,
                PaySession.authorised_at >= now - timedelta(hours=24),
            )
        )
        if int(spent or 0) + amount > profile.limit_per_day:
            return DeclineReason.LIMIT_EXCEEDED
        return None

    def _needs_step_up(self, session: Session, row: PaySession) -> bool:
        settings = self.crm.settings
        if row.match_margin_z is None or row.match_margin_z < settings.pay_step_up_margin_z:
            return True
        threshold = settings.pay_step_up_amounts.get(row.currency, settings.pay_step_up_amount)
        if row.amount > threshold:
            return True
        payers = session.scalar(select(func.count()).select_from(PaymentProfile)) or 0
        return payers > settings.pay_step_up_gallery

    # -- authorisation -------------------------------------------------------------------

    def _authorise(self, session: Session, row: PaySession, now: datetime) -> None:
        """Sign the one authorisation of this session (never a second: `advance` refuses
        to leave `authorised`)."""
        assert row.customer_id is not None and row.authorisation is None
        profile = session.get(PaymentProfile, row.customer_id)
        assert profile is not None
        payments.advance(row, S.AUTHORISED)
        expires = now + timedelta(seconds=self.crm.settings.pay_authorisation_seconds)
        payload = {
            "session_id": row.id,
            "customer_ref": row.customer_id,
            "payment_token": profile.token,
            "provider": profile.provider,
            "amount": row.amount,
            "currency": row.currency,
            "store_id": row.store_id,
            "till": row.till,
            "expires_at": _aware(expires).isoformat(),
        }
        signature = base64.b64encode(self._key.sign(canonical(payload))).decode()
        row.authorisation = json.dumps({"payload": payload, "signature": signature})
        row.authorised_at = now

    # -- step-up -------------------------------------------------------------------------

    def step_up(
        self, principal: Principal, session_id: str, digits: str, now: datetime | None = None
    ) -> SessionView:
        """The customer's last 4 phone digits. Right: authorised (limits checked again).
        Wrong: counted on the session and on the customer; the session declines
        `step_up_failed` after `pay_step_up_attempts`, and `pay_lock_failures` wrong in a
        row lock the customer's face payment (`payment_locked`, the store alerted).
        Malformed digits are refused (422 `bad_last4`) and not counted."""
        settings = self.crm.settings
        now = now or utcnow()
        snapshot = self._open(principal, session_id, (S.STEP_UP,), now)
        if not isinstance(digits, str) or not payments.LAST4.match(digits):
            raise InvalidError(
                "the last 4 digits of the phone: exactly 4 digits", reason="bad_last4"
            )
        locked_now = False
        try:
            with db.transaction(self.crm.sessions, write_lock=True) as session:
                row = self._lock(session, principal, snapshot, now)
                customer_id = row.customer_id
                why = None if customer_id is None else self._payable(session, customer_id)
                if customer_id is None or why is not None:
                    payments.advance(row, S.DECLINED, why or DeclineReason.NOT_ENROLLED_FOR_PAYMENT)
                    right = False
                else:
                    # locked too: two tills' sessions of one customer count every wrong try
                    profile = session.get(PaymentProfile, customer_id, with_for_update=True)
                    assert profile is not None
                    right = payments.check_last4(settings, profile, digits)
                    if right:
                        profile.failed_step_ups = 0
                        limit = self._limits(session, customer_id, row.amount, row.currency, now)
                        if limit is not None:
                            payments.advance(row, S.DECLINED, limit)
                        else:
                            self._authorise(session, row, now)
                    else:
                        locked_now = self._wrong(session, principal, row, profile, now)
                session.flush()
                audit.record(
                    session,
                    principal,
                    "pay_session_step_up",
                    customer_id,
                    row.store_id,
                    session_id=row.id,
                    right=right,
                    attempts=row.step_up_attempts,
                    state=row.state,
                    reason=row.decline_reason,
                )
                view = self.view(row, now)
        except _Expired:
            raise SessionClosed("the session expired", reason="session_expired") from None
        if locked_now and self.on_lock is not None and customer_id is not None:
            self.on_lock(view.store_id, customer_id, view.till)
        return view

    def _wrong(
        self,
        session: Session,
        principal: Principal,
        row: PaySession,
        profile: PaymentProfile,
        now: datetime,
    ) -> bool:
        """Count wrong digits; True when they locked the customer's face payment."""
        settings = self.crm.settings
        row.step_up_attempts += 1
        profile.failed_step_ups += 1
        if profile.failed_step_ups >= settings.pay_lock_failures:
            profile.failed_step_ups = 0
            profile.locked_until = now + timedelta(minutes=settings.pay_lock_minutes)
            payments.advance(row, S.DECLINED, DeclineReason.STEP_UP_FAILED)
            audit.record(
                session,
                principal,
                "payment_locked",
                profile.customer_id,
                row.store_id,
                session_id=row.id,
                minutes=settings.pay_lock_minutes,
            )
            return True
        if row.step_up_attempts >= settings.pay_step_up_attempts:
            payments.advance(row, S.DECLINED, DeclineReason.STEP_UP_FAILED)
        return False

    # -- cancel and confirm ----------------------------------------------------------------

    def cancel(
        self, principal: Principal, session_id: str, now: datetime | None = None
    ) -> SessionView:
        """ "Pay another way": `declined/cancelled`; a final session is returned unchanged
        (a retried cancel, or one that crossed a decision). Audited `pay_session_cancel`."""
        now = now or utcnow()
        with db.transaction(self.crm.sessions) as session:
            row = payments.get_session(session, principal, session_id, now)
        if not payments.TRANSITIONS[SessionState(row.state)]:
            return self.view(row, now)
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            row = _locked_row(session, row.id)
            if payments.TRANSITIONS[SessionState(row.state)]:
                payments.advance(row, S.DECLINED, DeclineReason.CANCELLED)
                session.flush()
                audit.record(
                    session,
                    principal,
                    "pay_session_cancel",
                    row.customer_id,
                    row.store_id,
                    session_id=row.id,
                )
            return self.view(row, now)

    def confirm(
        self,
        principal: Principal,
        session_id: str,
        provider_reference: str,
        items: Sequence[ConfirmedItem],
        now: datetime | None = None,
    ) -> SessionView:
        """The POS charged the authorisation: the Purchase goes on the customer, marked
        paid by face, once (a repeat with the same reference returns the same answer;
        another reference is 409 `already_confirmed`). The items must add up to the
        authorised amount. A first confirmation after the charge deadline plus
        `pay_confirm_grace_seconds` (a retry lost on the network) is 409
        `authorisation_expired`: the POS may not charge an expired authorisation, so a
        late confirmation is no payment we will put on the customer. Once confirmed, the
        stored authorisation is dropped (it names the wallet token; the audit keeps the
        facts). Audited `pay_session_confirm`."""
        reference = provider_reference.strip() if isinstance(provider_reference, str) else ""
        if not 0 < len(reference) <= MAX_REFERENCE or not PRINTABLE.match(reference):
            raise InvalidError(
                f"a provider reference has 1 to {MAX_REFERENCE} printable characters",
                reason="bad_provider_reference",
            )
        _check_items(items)
        now = now or utcnow()
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            row = _locked_row(session, payments.get_session(session, principal, session_id, now).id)
            if row.confirmed_at is not None:
                if row.provider_reference != reference:
                    raise ConflictError(
                        "this session was confirmed with another provider reference",
                        reason="already_confirmed",
                    )
                return self.view(row, now)
            _require(row, (S.AUTHORISED,))
            deadline = self.charge_deadline(row)
            grace = timedelta(seconds=self.crm.settings.pay_confirm_grace_seconds)
            if deadline is None or now > deadline + grace:
                raise SessionClosed(
                    "the authorisation expired before the charge was confirmed: "
                    "nothing was recorded; refund the charge if one was made",
                    reason="authorisation_expired",
                )
            total = sum(i.quantity * i.unit_price for i in items)
            if total != row.amount:
                raise InvalidError(
                    f"the items add up to {total}, the authorised amount is {row.amount}",
                    reason="items_total_mismatch",
                )
            if row.customer_id is None:
                raise NotFoundError("the customer of this payment was erased")
            purchase = activity.add_purchase(
                session,
                principal,
                row.customer_id,
                row.store_id,
                [activity.Item(i.sku, i.name, i.quantity, i.unit_price) for i in items],
                currency=row.currency,
                at=now,
                paid_by="face",
            )
            row.purchase_id = purchase.id
            row.provider_reference = reference
            row.confirmed_at = now
            row.authorisation = None  # charged: the wallet token is not kept here
            session.flush()
            audit.record(
                session,
                principal,
                "pay_session_confirm",
                row.customer_id,
                row.store_id,
                session_id=row.id,
                purchase_id=purchase.id,
                items=len(items),
            )
            return self.view(row, now)


@dataclass(slots=True)
class _Outcome:
    """What a burst decided (applied to the locked row in one place, `_apply`)."""

    decline: DeclineReason | None = None
    to: SessionState | None = None
    customer_id: str | None = None
    smile_after_ms: int | None = None
    margin: float = 0.0
    no_face: bool = False
    scores: dict[str, Any] = field(default_factory=dict)


class _Expired(Exception):
    """The session ran out of time while locked (the expiry is kept, then 409)."""


def _locked_row(session: Session, session_id: str) -> PaySession:
    """The session's row, locked until the transaction ends and read afresh
    (`SELECT ... FOR UPDATE`; on SQLite the transaction must be a `write_lock` one,
    `db.transaction`: a red team got several authorisations and unlimited step-up
    attempts out of one session with parallel requests before)."""
    row = session.get(PaySession, session_id, with_for_update=True, populate_existing=True)
    if row is None:
        raise NotFoundError("no such payment session")
    return row


def _locked(profile: PaymentProfile, now: datetime) -> bool:
    return profile.locked_until is not None and _aware(profile.locked_until) > now


def _require(row: PaySession, wanted: Sequence[SessionState]) -> None:
    state = SessionState(row.state)
    if state in wanted:
        return
    if row.decline_reason == DeclineReason.EXPIRED:
        raise SessionClosed("the session expired: start a new one", reason="session_expired")
    if not payments.TRANSITIONS[state]:
        raise SessionClosed(f"the session is {state}: start a new one")
    raise ConflictError(
        f"a {state} session cannot take this (it wants {', '.join(wanted)})",
        reason="bad_transition",
    )


def _check_items(items: Sequence[ConfirmedItem]) -> None:
    if not 0 < len(items) <= MAX_ITEMS:
        raise InvalidError(f"a purchase has 1 to {MAX_ITEMS} items", reason="bad_items")
    for item in items:
        if (
            not 0 < len(item.sku) <= 64
            or not 0 < len(item.name) <= 200
            or not PRINTABLE.match(item.sku)
            or not 0 < item.quantity <= 10_000
            or not 0 <= item.unit_price <= payments.MAX_AMOUNT
        ):
            raise InvalidError(
                "an item has a sku (1-64), a name (1-200), a quantity 1 to 10000 and a "
                "unit price in minor units",
                reason="bad_items",
            )


def face_payments(session: Session, principal: Principal, customer_id: str) -> list[PaySession]:
    """A customer's face payments in the principal's stores, as the card's other
    activity (newest 100); audited `face_payments_read`."""
    principal.require(Permission.CUSTOMERS_READ)
    customers.load(session, customer_id)
    rows = customers.face_payments(
        session, customer_id, limit=100, stores=principal.visible_stores()
    )
    audit.record(session, principal, "face_payments_read", customer_id, count=len(rows))
    return rows
