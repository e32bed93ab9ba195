"""Faces of customers: enrollment, identification, verification, withdrawal, erasure.

The rules live here:

* No template is stored without an active `in_store_recognition` consent.
* Enrollment is all-or-nothing: every photo passes the quality gate before
  anything is written.
* Withdrawing recognition consent deletes the customer's templates (and kept
  photo) and takes them out of search in the same transaction; the consent
  history stays. Erasure deletes everything about the customer.
* Every identification and lookup leaves an audit event naming only
  customers; faces that match no customer are counted, never described.
* A face is named only when both embedders of the cascade agree and its customer is
  clearly ahead of every other (`gallery.cascade`); the second model (SFace) runs only
  for faces whose first-stage (dlib) score could be accepted. Each enrollment photo
  stores a template of each model. Customers enrolled before the cascade (first-model
  templates only, and no kept photo to backfill from) are decided by the first model
  alone at its own single-model threshold, never at the lower stage threshold.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine, delete, exists, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker

from facecrm.config import Settings
from facecrm.crm import accounts, audit, auditchain, customers, db, erasures, payments, readiness
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.errors import (
    AlreadyEnrolledError,
    ConsentError,
    FacecrmError,
    FaceMismatchError,
    InvalidError,
    NotFoundError,
)
from facecrm.crm.gallery_store import (
    GalleryStore,
    MemoryGalleryStore,
    PgVectorGalleryStore,
    Row,
    bump_generation,
)
from facecrm.crm.models import (
    Customer,
    CustomerPhoto,
    FaceTemplate,
    GalleryState,
    Purpose,
)
from facecrm.crm.runtime import Runtime
from facecrm.crm.sync import GallerySync, record_added, record_removed
from facecrm.crm.vault import TemplateVault
from facecrm.crypto import CustomerCipher, KeyProvider
from facecrm.gallery.cascade import Accept, CascadeCalibration, Reason, Unknown, decide
from facecrm.gallery.gallery import Candidate, assign
from facecrm.gallery.threshold import Calibration
from facecrm.vision.image import decode_image
from facecrm.vision.pipeline import FacePipeline, QualityError
from facecrm.vision.second import SecondOpinion
from facecrm.vision.types import Face, Image, Vector

__all__ = [
    "AlreadyEnrolledError",
    "ConsentError",
    "EnrollmentError",
    "FaceCRM",
    "FaceMismatchError",
    "Identification",
    "NotFoundError",
    "Photo",
    "Runtime",
    "TemplateVault",
]


# where a customer's data lives (every table with a foreign-key path to `customers`)
CUSTOMER_TABLES = (
    "customers",
    "consents",
    "customer_keys",
    "customer_photos",
    "face_templates",
    "feedback",
    "interests",
    "purchases",
    "purchase_items",
    "visits",
    "alerts",
    "match_disputes",
    "verified_contacts",
    "customer_incentives",
    "payment_profiles",
    "pay_sessions",
)
FACE_TABLES = ("face_templates", "customer_photos", "customer_keys")


@dataclass(frozen=True, slots=True)
class Photo:
    """A decoded photo and where it came from (a file name, 'kiosk', ...)."""

    source: str
    image: Image


class EnrollmentError(FacecrmError, ValueError):
    """A photo of an enrollment failed the quality gate; nothing was stored (422).

    `reason` is the quality gate's; `detail` its message, without the file name (which
    is the caller's own upload). An ordinary exception class on purpose: a frozen/slotted
    dataclass cannot take the `__traceback__` that Starlette and `raise` set on it.
    """

    status = 422

    def __init__(self, source: str, error: QualityError) -> None:
        super().__init__(source, error, reason=error.reason)
        self.source = source
        self.error = error

    @property
    def detail(self) -> str:
        return str(self.error)

    def __str__(self) -> str:
        return f"{self.source}: {self.error}"


class _Refused(Exception):
    """An enrollment refused for who is in the photo (audited, then made public).

    An ordinary exception class, not a dataclass: the server sets `__traceback__`.
    """

    def __init__(
        self, action: str, customer_id: str, target: str | None, similarity: float
    ) -> None:
        super().__init__(action)
        self.action = action  # enroll_duplicate or enroll_mismatch
        self.customer_id = customer_id  # whom the face belongs to, or was meant for
        self.target = target  # the customer being enrolled or extended (None: a new one)
        self.similarity = similarity


def _wire(rows: Sequence[Row]) -> list[dict[str, object]]:
    """Templates for the agent's gallery sync (base64 of the float32 vector)."""
    return [
        {"id": t, "customer_id": c, "vector": base64.b64encode(v.tobytes()).decode()}
        for t, c, v in rows
    ]


def _similarity(a: _Probe, b: _Probe) -> float | None:
    """The second model's similarity of two probes."""
    return float(a.second() @ b.second())


def _embed(second: SecondOpinion, image: Image, face: Face) -> Vector:
    vector: Vector = second.embed(image, [face])[0]
    return vector


def _vectors(faces: Sequence[Face]) -> list[Vector]:
    """The templates of embedded faces (the pipeline fills one in for every face it returns)."""
    vectors = [f.template for f in faces if f.template is not None]
    if len(vectors) != len(faces):
        raise ValueError("a face without a template reached the face service")
    return vectors


@dataclass(frozen=True, slots=True)
class Identification:
    """One face of a photo and the decision about it (`reason` says why it is unknown:
    `no_match`, or `ambiguous` when two customers were too close to tell apart)."""

    face: Face
    match: Candidate | None
    customer_name: str | None = None
    reason: Reason | None = None
    preferred_name: str | None = None  # with the name and tier: all an answer shows, so
    tier: str | None = None  # callers need no second query for the customers named


@dataclass(slots=True)
class _Probe:
    """One face to decide: its first-model template and, computed at most once and only
    when asked for, its second-model template."""

    first: Vector
    compute_second: Callable[[], Vector] | None = None
    second_vector: Vector | None = field(default=None, repr=False)

    def second(self) -> Vector:
        if self.second_vector is None:
            assert self.compute_second is not None, "no second model without a cascade"
            self.second_vector = self.compute_second()
        return self.second_vector


@dataclass(frozen=True, slots=True)
class _Decided:
    """The decision for one face: a customer, or unknown with the reason."""

    match: Candidate | None
    reason: Reason | None
    score: float = -math.inf  # what ranks accepted faces claiming the same customer
    best: Candidate | None = None  # the closest customer by the first model (never shown)


@dataclass(frozen=True, slots=True)
class Backfill:
    """`FaceCRM.backfill_templates`: customers given a second-model template from their
    kept photo, and customers left to the first model alone (no usable kept photo)."""

    backfilled: int
    first_model_only: int


@dataclass(frozen=True, slots=True)
class Verification:
    """A 1:1 check of a photo against one customer's templates."""

    match: bool
    similarity: float | None  # None: no face in the photo
    threshold: float


class FaceCRM:
    """The face service: enroll, identify, verify, withdraw and erase customers' faces.

    Built on a `Runtime` (the process's database, keys and pipeline) and a
    `TemplateVault` (the customers' data keys). Every operation takes the acting
    principal explicitly and records its own audit event.

    `FaceCRM(settings)` opens the runtime; `migrate=True` first brings the schema to
    head and seals templates from before encryption at rest (for `facecrm migrate`, the
    server's start, `facecrm demo` and `facecrm.open`); without it an outdated schema
    raises `SchemaOutdatedError`. `runtime` shares an open runtime; `keys` replaces the
    configured master keys (a KMS client implementing `crypto.KeyProvider`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: FacePipeline | None = None,
        *,
        migrate: bool = False,
        runtime: Runtime | None = None,
        keys: KeyProvider | None = None,
    ) -> None:
        if runtime is None:
            if settings is None:
                raise TypeError("FaceCRM needs the settings (or an open runtime)")
            runtime = Runtime(settings, pipeline, keys=keys, migrate=migrate)
        self.runtime = runtime
        self.vault = TemplateVault(self.runtime)
        # templates from before encryption at rest: a full-table pass, so migrations only
        self.legacy_sealed = self.vault.seal_legacy() if migrate else 0
        # a restored dump without the plaintext search table: its rows rebuilt, migrations only
        self.search_rows_restored = self._restore_search_rows() if migrate else 0

    # -- the runtime's resources, as before the split (the API and tests use these) --

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.runtime.sessions

    @property
    def keys(self) -> KeyProvider:
        return self.runtime.keys

    @property
    def pipeline(self) -> FacePipeline:
        return self.runtime.pipeline

    @property
    def model_id(self) -> str:
        return self.runtime.model_id

    @property
    def calibration(self) -> Calibration:
        return self.runtime.calibration

    @property
    def threshold(self) -> float:
        """The similarity at which the first model alone accepts a face as a customer."""
        return self.runtime.threshold

    @property
    def cascade(self) -> CascadeCalibration | None:
        return self.runtime.cascade

    @property
    def second_opinion(self) -> SecondOpinion | None:
        return self.runtime.second_opinion

    @property
    def first_threshold(self) -> float:
        """The first model's similarity every named face reaches (the cascade's first-stage
        threshold, or the single-model threshold)."""
        return self.runtime.first_threshold

    def verify_audit(self) -> auditchain.Report:
        """Check the audit trail's hash chain (see `auditchain`)."""
        return self.runtime.verify_audit()

    def close(self) -> None:
        self.runtime.close()

    # -- the vault's operations, as before the split ---------------------------------

    def cipher(self, session: Session, customer_id: str, create: bool = False) -> CustomerCipher:
        return self.vault.cipher(session, customer_id, create)

    def plain_templates(self, session: Session, customer_id: str | None = None) -> list[Row]:
        return self.vault.plain_templates(session, customer_id)

    def rotate_keys(self, principal: Principal, batch: int = 500) -> int:
        return self.vault.rotate_keys(principal, batch)

    def master_keys_in_use(self) -> set[str]:
        return self.vault.master_keys_in_use()

    # -- the gallery -------------------------------------------------------------------

    @cached_property
    def gallery(self) -> GalleryStore:
        if self.engine.dialect.name == "postgresql":
            return PgVectorGalleryStore(
                self.model_id,
                m=self.settings.pgvector_hnsw_m,
                ef_construction=self.settings.pgvector_hnsw_ef_construction,
                ef_search=self.settings.pgvector_hnsw_ef_search,
            )
        return MemoryGalleryStore(self._load_gallery, self.model_id, self.settings)

    @cached_property
    def sync(self) -> GallerySync:
        """Agents' incremental gallery sync and server-side decisions (`crm.sync`)."""
        return GallerySync(self)

    def _restore_search_rows(self, chunk: int = 2_000) -> int:
        """PostgreSQL: the pgvector rows of templates that have none, decrypted from the
        templates. A backup taken with `pg_dump --exclude-table-data=gallery_vectors` (the
        plaintext search table; docs/deploy.md) restores without them, and would otherwise
        recognise nobody. Returns how many rows were written."""
        if self.engine.dialect.name != "postgresql":
            return 0
        with self.sessions() as session:
            missing = session.execute(
                text(
                    "SELECT t.customer_id, t.id FROM face_templates t"
                    " LEFT JOIN gallery_vectors g ON g.template_id = t.id"
                    " WHERE t.model_id = :m AND g.template_id IS NULL"
                ),
                {"m": self.model_id},
            ).all()
        wanted = {template_id for _, template_id in missing}
        owners = sorted({owner for owner, _ in missing})
        for start in range(0, len(owners), chunk):
            with db.transaction(self.sessions) as session:
                rows = self.vault.plain_templates(
                    session, customer_ids=owners[start : start + chunk]
                )
                self.gallery.added(session, [r for r in rows if r[0] in wanted])
        return len(wanted)

    def _load_gallery(self) -> tuple[list[Row], int | None]:
        with self.sessions() as session:
            return self.vault.plain_templates(session), self.generation(session)

    # -- enrollment -----------------------------------------------------------------

    def enroll(
        self,
        name: str,
        photos: Sequence[Photo],
        consent_text: int | str | None,
        channel: str,
        principal: Principal,
        profile: dict[str, object] | None = None,
        store_id: str | None = None,
        *,
        language: str | None = None,
        age_confirmed: int | None = None,
        then: Callable[[Session, Customer], None] | None = None,
    ) -> Customer:
        """Create a customer with recognition consent and a template per photo, or nothing.

        `profile` holds further customer fields; with `show_photo` among them the
        first photo is kept for the staff card. The photos must all be one person
        (`FaceMismatchError`) who is not already enrolled (`AlreadyEnrolledError`).
        The consent (`customers.ConsentGrant`: the text shown by id, a version or None for
        the current one) is witnessed by `principal`, in its store. `then(session, customer)`
        adds the caller's own rows in the same transaction (self-service: the verified
        contact and the incentive), so they are written with the customer or not at all.
        """
        if not photos:
            raise InvalidError("enrollment needs at least one photo")
        faces, probes = self._gate(photos)
        grant = ConsentGrant(
            Purpose.IN_STORE_RECOGNITION,
            consent_text,
            channel,
            store_id,
            language=language,
            age_confirmed=age_confirmed,
        )
        with self._refusals(principal, store_id), db.transaction(self.sessions) as session:
            self._refuse_duplicates(session, probes, None)
            customer = customers.create(session, principal, {**(profile or {}), "name": name})
            customers.give_consent(session, principal, customer.id, grant)
            self._store(session, principal, customer, photos, faces, probes)
            if customer.show_photo:
                self._keep_photo(session, customer, photos[0].image)
            if then is not None:
                then(session, customer)
        return customer

    def add_photos(
        self,
        customer_id: str,
        photos: Sequence[Photo],
        principal: Principal,
        keep_photo: bool = False,
        override_reason: str | None = None,
    ) -> list[FaceTemplate]:
        """Add templates (a new look: glasses, beard) to a consenting customer.

        Each photo must match the customer's existing templates 1:1 at the
        operating threshold -- otherwise anyone's face could be attached to the
        customer and then be recognised as them. A manager may override a
        mismatch with a reason (audited as `face_override`); no override lets a
        face that already belongs to another customer in. With `keep_photo` and
        the customer's agreement (`show_photo`), the first photo is kept as the
        picture on the staff card.
        """
        if override_reason is not None:
            principal.require(Permission.FACES_OVERRIDE)
            override_reason = override_reason.strip()
            if not override_reason:
                raise InvalidError("an override needs a reason")
        if not photos:
            raise InvalidError("at least one photo is needed")
        faces, probes = self._gate(photos)
        with self._refusals(principal, None), db.transaction(self.sessions) as session:
            customer = customers.load(session, customer_id)
            self._refuse_duplicates(session, probes, customer.id)
            own = [v for _, _, v in self.vault.plain_templates(session, customer.id)]
            if own:
                best = min(float(np.max(np.stack(own) @ p.first)) for p in probes)
                same = all(self._is_customer(session, customer.id, own, p) for p in probes)
                if not same and override_reason is None:
                    raise _Refused("enroll_mismatch", customer.id, customer.id, best)
                if not same:
                    audit.record(
                        session,
                        principal,
                        "face_override",
                        customer.id,
                        similarity=round(best, 4),
                        reason=override_reason,
                    )
            templates = self._store(session, principal, customer, photos, faces, probes)
            if keep_photo and customer.show_photo:
                self._keep_photo(session, customer, photos[0].image)
        return templates

    def _gate(self, photos: Sequence[Photo]) -> tuple[list[Face], list[_Probe]]:
        """Every photo passes the quality gate, and all of them are the same person (by the
        same rule as identification). Returns the faces and both models' templates."""
        faces = []
        for photo in photos:
            try:
                faces.append(self.pipeline.enrollment_face(photo.image))
            except QualityError as exc:
                raise EnrollmentError(photo.source, exc) from exc
        vectors = _vectors(faces)
        second = self.second_opinion
        seconds: list[Vector | None] = [None] * len(faces)
        if second is not None:  # stored with the first model's: embed every photo once
            chips = [second.chip(p.image, f) for p, f in zip(photos, faces, strict=True)]
            seconds = list(second.embed_chips(chips))
        probes = [_Probe(v, None, s) for v, s in zip(vectors, seconds, strict=True)]
        head = probes[0]
        for photo, probe in zip(photos[1:], probes[1:], strict=True):
            first = float(probe.first @ head.first)
            if not self._pair_matches(first, functools.partial(_similarity, probe, head)):
                raise FaceMismatchError(
                    f"{photo.source}: not the same person as the first photo; nothing was stored"
                )
        return faces, probes

    def _refuse_duplicates(
        self, session: Session, probes: Sequence[_Probe], customer_id: str | None
    ) -> None:
        """Refuse a face that identification would give to another customer (1:N), or
        that is too close to another customer to tell apart (ambiguous)."""
        for probe in probes:  # one decision each: a customer is given to one face only
            (decided,) = self._decide(session, [probe])
            other = decided.match
            if other is None and decided.reason == "ambiguous":
                other = decided.best
            if other is not None and other.customer_id != customer_id:
                raise _Refused("enroll_duplicate", other.customer_id, customer_id, other.similarity)

    # -- the decision rule (one place for identify, verify and enrollment checks) ----

    def _pair_matches(self, first: float, second: Callable[[], float | None]) -> bool:
        """1:1: do two faces (or a face and a customer) match? `second()` gives the second
        model's similarity, None when the customer has no second-model template (then the
        first model decides alone at its single-model threshold)."""
        cascade = self.cascade
        if cascade is None:
            return first >= self.threshold

        def scores(_ids: Sequence[str]) -> dict[str, float]:
            value = second()
            return {} if value is None else {"x": value}

        decision = decide({"x": first}, scores, cascade, self.settings.target_fmr, self.threshold)
        return isinstance(decision, Accept)

    def _is_customer(
        self, session: Session, customer_id: str, own: Sequence[Vector], probe: _Probe
    ) -> bool:
        """1:1: is `probe` the customer whose first-model templates are `own`?"""
        first = float(np.max(np.stack(own) @ probe.first))

        def second() -> float | None:
            scores = self._second_scores(session, probe, [customer_id])
            return scores.get(customer_id)

        return self._pair_matches(first, second)

    def _second_scores(
        self, session: Session, probe: _Probe, customer_ids: Sequence[str]
    ) -> dict[str, float]:
        """The best second-model similarity of `probe` to each customer that has
        second-model templates; the probe's own is computed only if one has."""
        cascade = self.cascade
        assert cascade is not None
        rows = self.vault.plain_templates(
            session, model_id=cascade.second.model_id, customer_ids=customer_ids
        )
        if not rows:
            return {}
        query = probe.second()
        best: dict[str, float] = {}
        for _, owner, vector in rows:
            best[owner] = max(best.get(owner, -math.inf), float(vector @ query))
        return best

    def _probes(self, image: Image, faces: Sequence[Face]) -> list[_Probe]:
        """Faces of an image to decide; their second-model templates are computed lazily."""
        second = self.second_opinion
        probes = []
        for face, vector in zip(faces, _vectors(faces), strict=True):
            compute = None if second is None else functools.partial(_embed, second, image, face)
            probes.append(_Probe(vector, compute))
        return probes

    def _decide(self, session: Session, probes: Sequence[_Probe]) -> list[_Decided]:
        """1:N for the faces of one photo; one customer is given to one face at most."""
        if not probes:
            return []
        per_face = self.gallery.candidates(session, np.stack([p.first for p in probes]))
        cascade = self.cascade
        if cascade is None:
            return [
                _Decided(d.match, None if d.match else "no_match", best=d.best)
                for d in assign(per_face, self.threshold)
            ]
        decided = []
        for probe, cands in zip(probes, per_face, strict=True):
            by_id = {c.customer_id: c for c in cands}
            decision = self.cascade_decision(
                session, probe, cands, self.settings.target_fmr, self.threshold
            )
            best = cands[0] if cands else None
            if isinstance(decision, Accept):
                decided.append(_Decided(by_id[decision.customer], None, decision.score_z, best))
            else:
                decided.append(_Decided(None, decision.reason, best=best))
        # a customer claimed by several faces goes to the strongest claim only
        taken: set[str] = set()
        for k in sorted(range(len(decided)), key=lambda k: decided[k].score, reverse=True):
            match = decided[k].match
            if match is None:
                continue
            if match.customer_id in taken:
                decided[k] = _Decided(None, "no_match", best=decided[k].best)
            taken.add(match.customer_id)
        return decided

    def cascade_decision(
        self,
        session: Session,
        probe: _Probe,
        candidates: Sequence[Candidate],
        fmr: float,
        threshold: float,
    ) -> Accept[str] | Unknown:
        """The cascade's 1:N decision for one face at the operating point `fmr` with the
        first model's `threshold` (recognition's, or face checkout's stricter one)."""
        assert self.cascade is not None
        return decide(
            {c.customer_id: c.similarity for c in candidates},
            functools.partial(self._second_scores, session, probe),
            self.cascade,
            fmr,
            threshold,
        )

    @contextmanager
    def _refusals(self, principal: Principal, store_id: str | None) -> Iterator[None]:
        """Turn a `_Refused` into its public error after auditing it in its own transaction.

        The enrollment's transaction is rolled back (nothing stored), but the
        attempt stays in the audit trail -- with the other customer's id for a
        duplicate, which the caller is never told.
        """
        try:
            yield
        except _Refused as refused:
            with db.transaction(self.sessions) as session:
                audit.record(
                    session,
                    principal,
                    refused.action,
                    refused.customer_id,
                    store_id,
                    target=refused.target,
                    similarity=round(refused.similarity, 4),
                )
            if refused.action == "enroll_duplicate":
                raise AlreadyEnrolledError(
                    "this face is already enrolled under another customer; nothing was stored"
                ) from None
            raise FaceMismatchError(
                "the photo does not match the customer's enrolled face; nothing was stored"
                " (a manager may override with a reason)"
            ) from None

    def _store(
        self,
        session: Session,
        principal: Principal,
        customer: Customer,
        photos: Sequence[Photo],
        faces: list[Face],
        probes: Sequence[_Probe],
    ) -> list[FaceTemplate]:
        """A template per photo of the first model (searched) and, with the cascade, one of
        the second model beside it (read for the few candidates the first stage keeps);
        returns the first model's."""
        if customer.active_consent(Purpose.IN_STORE_RECOGNITION) is None:
            raise ConsentError(f"customer {customer.id} has no active recognition consent")
        templates, seconds = [], []
        vectors = [p.first for p in probes]
        sealed = self.vault.seal_templates(session, customer.id, vectors)
        cascade = self.cascade
        second: list[bytes | None] = [None] * len(probes)
        if cascade is not None:
            second_vectors = [p.second() for p in probes]
            model = cascade.second.model_id
            second = list(self.vault.seal_templates(session, customer.id, second_vectors, model))
        for photo, face, vector, other in zip(photos, faces, sealed, second, strict=True):
            assert face.quality is not None
            quality = dataclasses.asdict(face.quality)
            quality.pop("issues")
            rounded = {k: round(float(v), 4) for k, v in quality.items()}
            template = FaceTemplate(
                model_id=self.model_id, vector=vector, quality=rounded, source=photo.source[:200]
            )
            customer.templates.append(template)
            templates.append(template)
            if other is not None and cascade is not None:
                seconds.append(
                    FaceTemplate(
                        model_id=cascade.second.model_id,
                        vector=other,
                        quality=rounded,
                        source=photo.source[:200],
                    )
                )
                customer.templates.append(seconds[-1])
        session.flush()
        self.gallery.added(
            session,
            [(t.id, customer.id, v) for t, v in zip(templates, vectors, strict=True)],
        )
        record_added(session, customer.id, [t.id for t in [*templates, *seconds]])
        audit.record(session, principal, "enroll_faces", customer.id, templates=len(templates))
        return templates

    def _keep_photo(self, session: Session, customer: Customer, image: Image) -> None:
        pil = PILImage.fromarray(image)
        pil.thumbnail((480, 480))
        buffer = io.BytesIO()
        pil.save(buffer, "JPEG", quality=85)
        sealed = self.vault.seal_photo(session, customer.id, buffer.getvalue())
        session.merge(CustomerPhoto(customer_id=customer.id, jpeg=sealed))

    def view_photo(self, principal: Principal, customer_id: str, channel: str) -> bytes | None:
        """The kept photo for a staff card (None if none or not agreed); audited."""
        principal.require(Permission.CUSTOMERS_READ)
        with db.transaction(self.sessions) as session:
            jpeg = self.photo(session, customer_id)
            if jpeg is not None:
                audit.record(session, principal, "photo_view", customer_id, channel=channel)
            return jpeg

    def photo(self, session: Session, customer_id: str) -> bytes | None:
        """The kept enrollment photo (JPEG), if the customer agreed to it being shown."""
        customer = customers.load(session, customer_id)
        row = session.get(CustomerPhoto, customer_id)
        if row is None or not customer.show_photo:
            return None
        return self.vault.open_photo(session, customer_id, row.jpeg)

    # -- identification ------------------------------------------------------------

    def identify(
        self,
        image: Image,
        principal: Principal,
        store_id: str | None = None,
        purpose: str = "identify",
        max_faces: int | None = None,
    ) -> list[Identification]:
        """Every face in `image` (or the `max_faces` largest): a customer, or unknown."""
        principal.require(Permission.IDENTIFY)
        if store_id is None and principal.stores:
            store_id = min(principal.stores)  # a store-bound principal acts in its store
        principal.require_store(store_id)  # chain-wide principals may name any or none
        with self.sessions() as session:  # before any work on the photo
            readiness.require(session, self.settings, store_id)
        faces = self.pipeline.faces(image)[:max_faces]
        with db.transaction(self.sessions) as session:
            decisions = self._decide(session, self._probes(image, faces))
            matched = [d.match.customer_id for d in decisions if d.match is not None]
            rows = session.execute(
                select(Customer.id, Customer.name, Customer.preferred_name, Customer.tier).where(
                    Customer.id.in_(matched)
                )
            )
            named = {row.id: row for row in rows}
            for decision in decisions:
                if decision.match is not None:
                    similarity = round(decision.match.similarity, 4)
                    audit.record(
                        session,
                        principal,
                        purpose,
                        decision.match.customer_id,
                        store_id,
                        similarity=similarity,
                    )
            audit.record(
                session,
                principal,
                f"{purpose}_summary",
                None,
                store_id,
                faces=len(faces),
                matched=len(matched),
                ambiguous=sum(d.reason == "ambiguous" for d in decisions),
            )
        results = []
        for face, d in zip(faces, decisions, strict=True):
            row = named.get(d.match.customer_id) if d.match else None
            results.append(
                Identification(
                    face=face,
                    match=d.match,
                    customer_name=row.name if row else None,
                    reason=d.reason,
                    preferred_name=row.preferred_name if row else None,
                    tier=row.tier if row else None,
                )
            )
        return results

    def verify(self, customer_id: str, image: Image, principal: Principal) -> Verification:
        """Is the largest face of `image` this customer? (1:1, audited)."""
        principal.require(Permission.IDENTIFY)
        faces = self.pipeline.faces(image)
        with db.transaction(self.sessions) as session:
            customer = customers.load(session, customer_id)
            vectors = [v for _, _, v in self.vault.plain_templates(session, customer.id)]
            similarity, match = None, False
            if faces and vectors:
                probe = self._probes(image, faces[:1])[0]
                similarity = float(np.max(np.stack(vectors) @ probe.first))
                match = self._is_customer(session, customer.id, vectors, probe)
            audit.record(session, principal, "verify", customer.id, match=match)
        return Verification(match, similarity, self.first_threshold)

    def gallery_export(self, principal: Principal) -> dict[str, object]:
        """What a store agent needs to decide on its own: templates, threshold, generation.

        Agents decide known/unknown locally so that nothing about people who
        did not opt in ever leaves the store.
        """
        principal.require(Permission.AGENT)
        cascade = self.cascade
        # None: a chain-wide call (the CLI's SYSTEM), not a store's agent
        store_id = None if principal.stores is None else accounts.device_store(principal)
        with db.transaction(self.sessions) as session:
            generation = self.generation(session)
            # a store that is not ready (when required) recognises no one
            ready = readiness.allows_recognition(session, self.settings, store_id)
            rows = self.vault.plain_templates(session) if ready else []
            second = (
                self.vault.plain_templates(session, model_id=cascade.second.model_id)
                if cascade is not None and ready
                else []
            )
            audit.record(
                session,
                principal,
                "gallery_sync",
                None,
                store_id,
                templates=len(rows) + len(second),
            )
        body: dict[str, object] = {
            "model_id": self.model_id,
            "threshold": self.threshold,
            "generation": generation,
            "templates": _wire(rows),
        }
        if cascade is not None:  # agents that predate the cascade ignore both fields
            body["cascade"] = cascade.to_json()
            body["target_fmr"] = self.settings.target_fmr
            body["second"] = {"model_id": cascade.second.model_id, "templates": _wire(second)}
        return body

    def generation(self, session: Session) -> int:
        """The gallery's change counter (bumped by every enrollment, withdrawal, erasure)."""
        value = session.scalar(
            select(GalleryState.generation).where(GalleryState.model_id == self.model_id)
        )
        return int(value or 0)

    def backfill_templates(self, principal: Principal) -> Backfill:
        """Give customers enrolled before the cascade a second-model template (audited).

        Only the kept enrollment photo (the staff-card picture, kept when the customer
        agreed) can be used: enrollment photos are not stored otherwise. Its face must be
        the customer's by the first model at its single-model threshold. Customers
        without one stay first-model-only: identification decides them by the first
        model alone at that (higher) threshold until they add a photo.
        """
        principal.require(Permission.FACES_OVERRIDE)
        cascade, second = self.cascade, self.second_opinion
        if cascade is None or second is None:
            return Backfill(0, 0)
        other = aliased(FaceTemplate)
        have_second = exists().where(  # NOT EXISTS, not NOT IN: an anti-join at any size
            other.customer_id == FaceTemplate.customer_id,
            other.model_id == cascade.second.model_id,
        )
        with self.sessions() as session:
            pending = list(
                session.scalars(
                    select(FaceTemplate.customer_id)
                    .where(FaceTemplate.model_id == self.model_id)
                    .where(~have_second)
                    .distinct()
                )
            )
        done = 0
        for customer_id in pending:  # one transaction per customer: the server keeps serving
            with db.transaction(self.sessions) as session:
                if self._backfill_one(session, principal, customer_id, cascade, second):
                    done += 1
        with db.transaction(self.sessions) as session:
            audit.record(
                session,
                principal,
                "templates_backfill_summary",
                None,
                backfilled=done,
                first_model_only=len(pending) - done,
            )
        return Backfill(done, len(pending) - done)

    def _backfill_one(
        self,
        session: Session,
        principal: Principal,
        customer_id: str,
        cascade: CascadeCalibration,
        second: SecondOpinion,
    ) -> bool:
        row = session.get(CustomerPhoto, customer_id)
        own = [v for _, _, v in self.vault.plain_templates(session, customer_id)]
        if row is None or not own:
            return False
        image = decode_image(self.vault.open_photo(session, customer_id, row.jpeg), self.settings)
        faces = self.pipeline.faces(image)
        if len(faces) != 1 or float(np.max(np.stack(own) @ _vectors(faces)[0])) < self.threshold:
            return False
        (sealed,) = self.vault.seal_templates(
            session, customer_id, [second.embed(image, faces)[0]], cascade.second.model_id
        )
        quality = dataclasses.asdict(faces[0].quality) if faces[0].quality else {}
        quality.pop("issues", None)
        template = FaceTemplate(
            customer_id=customer_id,
            model_id=cascade.second.model_id,
            vector=sealed,
            quality={k: round(float(v), 4) for k, v in quality.items()},
            source="backfill: kept photo",
        )
        session.add(template)
        session.flush()
        bump_generation(session, self.model_id)  # store agents fetch the new template
        record_added(session, customer_id, [template.id])
        audit.record(session, principal, "templates_backfill", customer_id, templates=1)
        return True

    # -- consent withdrawal and erasure ----------------------------------------------

    def withdraw(
        self,
        customer_id: str,
        purpose: Purpose,
        principal: Principal,
        channel: str = "api",
        store_id: str | None = None,
    ) -> None:
        """Withdraw one consent; for recognition, delete templates and photo at once; for
        payment, the payment set-up (`crm.payments`)."""
        with db.transaction(self.sessions) as session:
            customers.withdraw_consent(session, principal, customer_id, purpose, channel, store_id)
            if purpose == Purpose.IN_STORE_RECOGNITION:
                self._forget_face(session, customer_id)
            if purpose == Purpose.FACE_PAYMENT:
                payments.forget(session, customer_id)
        if purpose == Purpose.IN_STORE_RECOGNITION:
            self.scrub_erased(FACE_TABLES)
        if purpose == Purpose.FACE_PAYMENT:
            self.scrub_erased(("payment_profiles",))

    def forget_face(self, customer_id: str, reason: str, principal: Principal) -> None:
        """Delete a customer's templates, photo and data key (e.g. for retention)."""
        with db.transaction(self.sessions) as session:
            self._forget_face(session, customer_id)
            audit.record(session, principal, "forget_face", customer_id, reason=reason)
        self.scrub_erased(FACE_TABLES)

    def _forget_face(self, session: Session, customer_id: str) -> None:
        self.gallery.removed(session, customer_id)
        self._unsync(session, customer_id)
        session.execute(delete(FaceTemplate).where(FaceTemplate.customer_id == customer_id))
        session.execute(delete(CustomerPhoto).where(CustomerPhoto.customer_id == customer_id))
        # nothing else is sealed under the data key: destroy it too
        self.vault.destroy(session, customer_id)

    def delete_customer(self, customer_id: str, principal: Principal) -> None:
        """Erase a customer: profile, consents, templates, visits and the rest."""
        with db.transaction(self.sessions) as session:
            customer = customers.load(session, customer_id)
            self.gallery.removed(session, customer_id)
            self._unsync(session, customer_id)
            payments.erase_sessions(session, customer_id)
            session.delete(customer)
            audit.record(session, principal, "erase", customer_id)
            erasures.record(session, self.settings, customer_id)  # re-applied after a restore
        self.scrub_erased(CUSTOMER_TABLES)

    def _unsync(self, session: Session, customer_id: str) -> None:
        """Tell the agents (change log) and drop the decrypted copies (early: fail-safe)."""
        record_removed(session, customer_id)
        self.sync.cache.forget(customer_id)

    def scrub_erased(self, tables: Sequence[str] = CUSTOMER_TABLES) -> bool:
        """Once an erasure has committed, wipe the deleted rows from the database files.

        See `db.scrub`: on SQLite nothing of them is left in any file when this
        returns (unless a long reader blocks the checkpoint: False); on
        PostgreSQL the touched tables are vacuumed.
        """
        if self.engine.dialect.name == "postgresql":
            tables = [*tables, "gallery_vectors"]
        try:
            return db.scrub(self.engine, tables)
        except SQLAlchemyError:  # the erasure itself has committed: report, do not fail it
            db.log.exception("could not scrub erased data from the database files")
            return False

    # -- reads ---------------------------------------------------------------------

    def customers(self, principal: Principal) -> list[tuple[Customer, int]]:
        """Every customer with their number of templates (of the current model); audited
        (the whole list of names is a disclosure, like the API's CSV export)."""
        principal.require(Permission.CUSTOMERS_READ)
        with db.transaction(self.sessions) as session:
            count = (
                select(FaceTemplate.customer_id, func.count(FaceTemplate.id).label("n"))
                .where(FaceTemplate.model_id == self.model_id)
                .group_by(FaceTemplate.customer_id)
                .subquery()
            )
            rows = session.execute(
                select(Customer, func.coalesce(count.c.n, 0))
                .outerjoin(count, count.c.customer_id == Customer.id)
                .order_by(Customer.name, Customer.id)
            ).all()
            audit.record(session, principal, "customer_list", customers=len(rows))
            return [(c, int(n)) for c, n in rows]

    def customer(self, customer_id: str, principal: Principal) -> Customer:
        """One customer with consents and templates loaded; the lookup is audited."""
        with db.transaction(self.sessions) as session:
            customer = customers.load(session, customer_id)
            audit.record(session, principal, "lookup", customer.id)
            return customer
