"""The enrollment and identification service: the rules live here.

* No template is stored without an active `in_store_recognition` consent.
* Enrollment is all-or-nothing: every photo passes the quality gate before
  anything is written.
* Every identification and lookup leaves an audit event naming only
  customers; faces that are not matched are counted, never described.
* Deleting a customer removes their templates from search at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from facecrm.config import Settings, get_settings
from facecrm.crm import db
from facecrm.crm.models import (
    AuditEvent,
    Consent,
    Customer,
    FaceTemplate,
    GalleryState,
    Purpose,
)
from facecrm.gallery.gallery import Candidate, Gallery
from facecrm.gallery.index import HnswIndex
from facecrm.gallery.threshold import Calibration, load_calibration
from facecrm.vision.pipeline import FacePipeline, QualityError, default_pipeline
from facecrm.vision.types import Face, Image


class NotFoundError(LookupError):
    """An unknown customer id."""


class ConsentError(PermissionError):
    """The action needs an active consent the customer has not given."""


@dataclass(frozen=True, slots=True)
class Photo:
    """A decoded photo and where it came from (a file name, 'kiosk', ...)."""

    source: str
    image: Image


@dataclass(frozen=True, slots=True)
class EnrollmentError(ValueError):
    """A photo of an enrollment failed the quality gate; nothing was stored."""

    source: str
    error: QualityError

    def __str__(self) -> str:
        return f"{self.source}: {self.error}"


@dataclass(frozen=True, slots=True)
class Identification:
    """One face of a photo and the decision about it."""

    face: Face
    match: Candidate | None
    customer_name: str | None = None


class FaceCRM:
    """Customers, consents, templates and the gallery over one database."""

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: FacePipeline | None = None,
        actor: str = "cli",
    ) -> None:
        self.settings = settings or get_settings()
        self.engine = db.make_engine(self.settings.resolved_database_url)
        db.migrate(self.engine)
        self.sessions = db.session_factory(self.engine)
        self._pipeline = pipeline
        self.actor = actor

    @property
    def pipeline(self) -> FacePipeline:
        if self._pipeline is None:
            self._pipeline = default_pipeline()
        return self._pipeline

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @cached_property
    def calibration(self) -> Calibration:
        return load_calibration(self.model_id, self.settings.data_dir)

    @property
    def threshold(self) -> float:
        """The similarity at which a face is accepted as a customer."""
        return self.calibration.threshold(self.settings.target_fmr)

    # -- enrollment -----------------------------------------------------------------

    def enroll(
        self,
        name: str,
        photos: Sequence[Photo],
        consent_text_version: str,
        channel: str,
    ) -> Customer:
        """Create a customer with recognition consent and a template per photo."""
        name = name.strip()
        if not name:
            raise ValueError("the customer's name is empty")
        if not photos:
            raise ValueError("enrollment needs at least one photo")
        faces = self._gate(photos)
        with db.transaction(self.sessions) as session:
            customer = Customer(name=name)
            customer.consents.append(
                Consent(
                    purpose=Purpose.IN_STORE_RECOGNITION,
                    text_version=consent_text_version,
                    channel=channel,
                )
            )
            session.add(customer)
            templates = self._store_templates(session, customer, photos, faces)
            self._audit(session, "enroll", customer.id, {"templates": len(templates)})
        self._gallery_add(customer.id, templates)
        return customer

    def add_photos(self, customer_id: str, photos: Sequence[Photo]) -> list[FaceTemplate]:
        """Add templates (a new look: glasses, beard) to a consenting customer."""
        faces = self._gate(photos)
        with db.transaction(self.sessions) as session:
            customer = self._customer(session, customer_id)
            if customer.active_consent(Purpose.IN_STORE_RECOGNITION) is None:
                raise ConsentError(f"customer {customer_id} has no active recognition consent")
            templates = self._store_templates(session, customer, photos, faces)
            self._audit(session, "add_photos", customer.id, {"templates": len(templates)})
        self._gallery_add(customer_id, templates)
        return templates

    def _gate(self, photos: Sequence[Photo]) -> list[Face]:
        faces = []
        for photo in photos:
            try:
                faces.append(self.pipeline.enrollment_face(photo.image))
            except QualityError as exc:
                raise EnrollmentError(photo.source, exc) from exc
        return faces

    def _store_templates(
        self, session: Session, customer: Customer, photos: Sequence[Photo], faces: list[Face]
    ) -> list[FaceTemplate]:
        templates = []
        for photo, face in zip(photos, faces, strict=True):
            assert face.template is not None and face.quality is not None
            quality = dataclasses.asdict(face.quality)
            quality.pop("issues")
            template = FaceTemplate(
                model_id=self.model_id,
                vector=face.template.astype(np.float32).tobytes(),
                quality={k: round(float(v), 4) for k, v in quality.items()},
                source=photo.source[:200],
            )
            customer.templates.append(template)
            templates.append(template)
        session.flush()
        self._bump_generation(session)
        return templates

    # -- identification ------------------------------------------------------------

    def identify(self, image: Image, purpose: str = "identify") -> list[Identification]:
        """Every face in `image`: the opted-in customer it is, or unknown."""
        faces = self.pipeline.faces(image)
        gallery = self.gallery
        decisions = (
            gallery.identify(np.stack([f.template for f in faces]), self.threshold) if faces else []
        )
        matched = [d.match.customer_id for d in decisions if d.match is not None]
        with db.transaction(self.sessions) as session:
            rows = session.execute(
                select(Customer.id, Customer.name).where(Customer.id.in_(matched))
            )
            names = {customer_id: name for customer_id, name in rows}
            for decision in decisions:
                if decision.match is not None:
                    self._audit(
                        session,
                        purpose,
                        decision.match.customer_id,
                        {"similarity": round(decision.match.similarity, 4)},
                    )
            self._audit(
                session, f"{purpose}_summary", None, {"faces": len(faces), "matched": len(matched)}
            )
        return [
            Identification(
                face=face,
                match=d.match,
                customer_name=names.get(d.match.customer_id) if d.match else None,
            )
            for face, d in zip(faces, decisions, strict=True)
        ]

    # -- customers -----------------------------------------------------------------

    def customers(self) -> list[tuple[Customer, int]]:
        """Every customer with their number of templates (of the current model)."""
        with self.sessions() as session:
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
            )
            return [(c, int(n)) for c, n in rows]

    def customer(self, customer_id: str) -> Customer:
        """One customer with consents and templates loaded; the lookup is audited."""
        with db.transaction(self.sessions) as session:
            customer = self._customer(session, customer_id)
            self._audit(session, "lookup", customer.id, {})
            return customer

    def delete_customer(self, customer_id: str) -> None:
        """Erase a customer: profile, consents and templates; out of search at once."""
        with db.transaction(self.sessions) as session:
            customer = self._customer(session, customer_id)
            session.delete(customer)
            self._bump_generation(session)
            self._audit(session, "erase", customer_id, {})
        if "gallery" in self.__dict__:
            self.gallery.remove_customer(customer_id)

    def _customer(self, session: Session, customer_id: str) -> Customer:
        customer = session.scalar(
            select(Customer)
            .where(Customer.id == customer_id)
            .options(selectinload(Customer.consents), selectinload(Customer.templates))
        )
        if customer is None:
            raise NotFoundError(f"no customer with id {customer_id!r}")
        return customer

    def _audit(
        self, session: Session, action: str, customer_id: str | None, detail: dict[str, object]
    ) -> None:
        session.add(
            AuditEvent(actor=self.actor, action=action, customer_id=customer_id, detail=detail)
        )

    # -- gallery -------------------------------------------------------------------

    def _bump_generation(self, session: Session) -> None:
        updated = session.execute(
            update(GalleryState)
            .where(GalleryState.model_id == self.model_id)
            .values(generation=GalleryState.generation + 1)
        )
        if updated.rowcount == 0:  # type: ignore[attr-defined]
            session.add(GalleryState(model_id=self.model_id, generation=1))

    def _gallery_add(self, customer_id: str, templates: list[FaceTemplate]) -> None:
        if "gallery" not in self.__dict__:
            return  # loaded lazily from the database, which already holds them
        vectors = np.stack([np.frombuffer(t.vector, dtype=np.float32) for t in templates])
        self.gallery.add([t.id for t in templates], [customer_id] * len(templates), vectors)

    @cached_property
    def gallery(self) -> Gallery:
        """The search structure for the current model, loaded from the database.

        A large gallery's HNSW graph is saved under the cache folder together
        with the database generation it reflects, and reused while it matches.
        """
        with self.sessions() as session:
            rows = session.execute(
                select(FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.vector).where(
                    FaceTemplate.model_id == self.model_id
                )
            ).all()
            generation = session.scalar(
                select(GalleryState.generation).where(GalleryState.model_id == self.model_id)
            )
        dim = len(rows[0][2]) // 4 if rows else 128
        gallery = Gallery(dim, ann_min_size=self.settings.ann_min_size)
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(-1, dim)
        saved = self._load_saved_ann(dim, generation, {r[0] for r in rows})
        if saved is not None:
            gallery.attach_ann(saved)
        gallery.add([r[0] for r in rows], [r[1] for r in rows], vectors)
        if saved is None and gallery.ann is not None:
            self._save_ann(gallery.ann, generation or 0)
        return gallery

    def _ann_paths(self) -> tuple[Path, Path]:
        base = self.settings.cache_dir / f"hnsw-{self.model_id}"
        return base.with_suffix(".bin"), base.with_suffix(".json")

    def _load_saved_ann(self, dim: int, generation: int | None, ids: set[int]) -> HnswIndex | None:
        index_path, meta_path = self._ann_paths()
        if len(ids) < self.settings.ann_min_size:
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("generation") != generation or meta.get("count") != len(ids):
                return None
            return HnswIndex.load(index_path, dim, ids)
        except (OSError, ValueError, RuntimeError):
            return None

    def _save_ann(self, index: HnswIndex, generation: int) -> None:
        index_path, meta_path = self._ann_paths()
        index.save(index_path)
        meta_path.write_text(json.dumps({"generation": generation, "count": len(index)}))

