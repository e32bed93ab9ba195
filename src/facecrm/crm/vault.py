"""The template vault: customers' data keys and everything sealed under them.

Templates and kept photos are sealed with the customer's data key (`crypto`), which is
stored only wrapped by a master key of the runtime's `KeyProvider`. The vault is the
one place that creates, opens, re-wraps and destroys those keys; the face service
hands it vectors and photos and never sees a key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, exists, insert, select
from sqlalchemy.orm import Session

from facecrm.crm import audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.gallery_store import Row
from facecrm.crm.models import CustomerKey, FaceTemplate
from facecrm.crm.runtime import Runtime
from facecrm.crypto import CryptoError, CustomerCipher, KeyProvider, new_dek

BULK_CHUNK = 1_000  # customer ids per IN (...) list: far below SQLite's variable limit

PHOTO = "photo"


def template_label(model_id: str) -> str:
    """What a template's ciphertext is bound to besides its customer: its vector space."""
    return f"template:{model_id}"


class TemplateVault:
    """Per-customer data keys over one runtime: seal, open, rotate, destroy."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def keys(self) -> KeyProvider:
        return self.runtime.keys

    def cipher(self, session: Session, customer_id: str, create: bool = False) -> CustomerCipher:
        """The customer's data key (a new one when `create` and none exists)."""
        row = session.get(CustomerKey, customer_id)
        if row is None:
            if not create:
                raise CryptoError(f"customer {customer_id} has no data key")
            dek = new_dek()
            key_id, wrapped = self.keys.wrap(dek)
            session.add(CustomerKey(customer_id=customer_id, key_id=key_id, wrapped=wrapped))
            session.flush()
            return CustomerCipher(customer_id, dek)
        return CustomerCipher(customer_id, self.keys.unwrap(row.key_id, row.wrapped))

    def ciphers(self, session: Session, customer_ids: Collection[str]) -> dict[str, CustomerCipher]:
        """The data keys of those of `customer_ids` that have one, read without the ORM in
        one query per chunk: for bulk readers (a full agent sync opens 100,000s)."""
        ids = list(customer_ids)
        out: dict[str, CustomerCipher] = {}
        for start in range(0, len(ids), BULK_CHUNK):
            rows = session.execute(
                select(CustomerKey.customer_id, CustomerKey.key_id, CustomerKey.wrapped).where(
                    CustomerKey.customer_id.in_(ids[start : start + BULK_CHUNK])
                )
            )
            for customer_id, key_id, wrapped in rows:
                out[customer_id] = CustomerCipher(customer_id, self.keys.unwrap(key_id, wrapped))
        return out

    def seal_templates(
        self,
        session: Session,
        customer_id: str,
        vectors: Sequence[npt.NDArray[np.float32]],
        model_id: str | None = None,
    ) -> list[bytes]:
        """Templates of `model_id` (default: the current model), sealed (the customer's key
        is created if needed)."""
        cipher = self.cipher(session, customer_id, create=True)
        label = template_label(model_id or self.runtime.model_id)
        return [cipher.seal(v.astype(np.float32).tobytes(), label) for v in vectors]

    def seal_new_customers(
        self, session: Session, templates: Mapping[str, Sequence[npt.NDArray[np.float32]]]
    ) -> dict[str, list[bytes]]:
        """Templates of customers who have no data key yet, sealed under a new key each.

        The bulk path (imports, synthetic benchmark galleries): the keys are written in one
        INSERT, where `seal_templates` looks up and flushes one customer at a time, which
        makes filling 100,000 customers take minutes instead of seconds. A customer who
        already has a key is refused before anything is written: replacing a key would make
        everything it sealed unreadable.
        """
        ids = list(templates)
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = ids[start : start + BULK_CHUNK]
            taken = session.scalars(
                select(CustomerKey.customer_id).where(CustomerKey.customer_id.in_(chunk)).limit(1)
            ).first()
            if taken is not None:
                raise ValueError(f"customer {taken} already has a data key")
        label = template_label(self.runtime.model_id)
        keys: list[dict[str, object]] = []
        sealed: dict[str, list[bytes]] = {}
        for customer_id, vectors in templates.items():
            dek = new_dek()
            key_id, wrapped = self.keys.wrap(dek)
            keys.append({"customer_id": customer_id, "key_id": key_id, "wrapped": wrapped})
            cipher = CustomerCipher(customer_id, dek)
            sealed[customer_id] = [
                cipher.seal(v.astype(np.float32).tobytes(), label) for v in vectors
            ]
        if keys:
            session.execute(insert(CustomerKey), keys)
        return sealed

    def plain_templates(
        self,
        session: Session,
        customer_id: str | None = None,
        model_id: str | None = None,
        customer_ids: Collection[str] | None = None,
    ) -> list[Row]:
        """Decrypted templates of `model_id` (default: the current model), of one customer,
        of `customer_ids`, or of all."""
        model_id = model_id or self.runtime.model_id
        stmt = (
            select(FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.vector)
            .where(FaceTemplate.model_id == model_id)
            .order_by(FaceTemplate.customer_id, FaceTemplate.id)
        )
        if customer_id is not None:
            stmt = stmt.where(FaceTemplate.customer_id == customer_id)
        if customer_ids is not None:
            stmt = stmt.where(FaceTemplate.customer_id.in_(list(customer_ids)))
        sealed_rows = session.execute(stmt).all()
        # the keys in bulk: one query per customer made loading a 100k gallery take 18 s
        ciphers = self.ciphers(session, {owner for _, owner, _ in sealed_rows})
        label = template_label(model_id)
        rows: list[Row] = []
        for template_id, owner, sealed in sealed_rows:
            cipher = ciphers.get(owner)
            if cipher is None:
                raise CryptoError(f"customer {owner} has no data key")
            plain = cipher.open(sealed, label)
            rows.append((template_id, owner, np.frombuffer(plain, dtype=np.float32)))
        return rows

    def seal_photo(self, session: Session, customer_id: str, jpeg: bytes) -> bytes:
        return self.cipher(session, customer_id, create=True).seal(jpeg, PHOTO)

    def open_photo(self, session: Session, customer_id: str, sealed: bytes) -> bytes:
        return self.cipher(session, customer_id).open(sealed, PHOTO)

    def destroy(self, session: Session, customer_id: str) -> None:
        """Delete the customer's data key: what it sealed, in backups too, is unreadable."""
        session.execute(delete(CustomerKey).where(CustomerKey.customer_id == customer_id))

    def rotate_keys(self, principal: Principal, batch: int = 500) -> int:
        """Re-wrap every customer's data key under the current master key (online).

        Works in small transactions, so the server keeps serving; each batch is audited
        under `principal`. Returns how many keys were re-wrapped. Administrators only (the
        CLI's `SYSTEM` is one): it touches every customer's key, chain-wide.
        """
        principal.require(Permission.KEYS_ROTATE)
        self.keys.refresh()  # the CLI may just have added a key (to the file, or the KMS)
        current = self.keys.current_id
        done = 0
        while True:
            with db.transaction(self.runtime.sessions) as session:
                rows = session.scalars(
                    select(CustomerKey).where(CustomerKey.key_id != current).limit(batch)
                ).all()
                for row in rows:
                    dek = self.keys.unwrap(row.key_id, row.wrapped)
                    row.key_id, row.wrapped = self.keys.wrap(dek)
                done += len(rows)
                if rows:
                    audit.record(session, principal, "keys_rotate", rewrapped=len(rows))
            if len(rows) < batch:
                return done

    def master_keys_in_use(self) -> set[str]:
        """The master keys some data key is wrapped with (the others may be retired)."""
        with self.runtime.sessions() as session:
            return set(session.scalars(select(CustomerKey.key_id).distinct()))

    def seal_legacy(self) -> int:
        """Encrypt templates written before encryption at rest (customers without a key).

        A full-table pass: run by migrations only (`facecrm migrate`, the server's start),
        never when an ordinary process opens the database. Returns how many were sealed.
        """
        with db.transaction(self.runtime.sessions) as session:
            legacy = session.scalars(
                select(FaceTemplate).where(  # NOT EXISTS: an anti-join; PostgreSQL ran
                    # NOT IN (subquery) as a nested loop at 1M templates (25+ min at start-up)
                    ~exists().where(CustomerKey.customer_id == FaceTemplate.customer_id)
                )
            ).all()
            for template in legacy:
                cipher = self.cipher(session, template.customer_id, create=True)
                template.vector = cipher.seal(template.vector, template_label(template.model_id))
            return len(legacy)
