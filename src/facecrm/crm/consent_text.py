"""The consent texts the chain owns: versioned, translated rows that consents point at.

A text is a `ConsentText` row (purpose, version, language, body). Rows are never edited:
a consent points at the exact row the customer was shown, so changing a text means a new
row -- a new version -- and the old row is only deactivated. At most one row is active
per purpose and language: the text shown today. Migration 0008 ships `CURRENT` in English
and French for `in_store_recognition`; other purposes need the chain's own text first.

Which text a consent is given on: the id the page showed (`resolve(text_id=...)`), or for
older clients a version, or nothing -- the active text of the purpose in the customer's
language, else the store's default language, else the chain's (`crm.enrollment`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facecrm.crm import audit
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import ConsentText, Purpose

CURRENT = "2026-11-v1"  # the version shipped by migration 0008 (English and French)
SHIPPED_LANGUAGES = ("en", "fr")
MAX_BODY = 20_000
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?\Z")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}\Z")


def check_language(language: str) -> str:
    """A language tag like `en`, `fr` or `fr-CA` (reason `bad_language` otherwise)."""
    if not LANGUAGE.match(language):
        raise InvalidError("a language is a code like en, fr or fr-CA", reason="bad_language")
    return language


def list_texts(
    session: Session,
    principal: Principal,
    purpose: Purpose | None = None,
    language: str | None = None,
    active_only: bool = False,
) -> list[ConsentText]:
    """Texts, newest first (not personal data: not audited)."""
    principal.require(Permission.CONSENT_TEXTS_READ)
    query = select(ConsentText).order_by(
        ConsentText.purpose, ConsentText.language, ConsentText.id.desc()
    )
    if purpose is not None:
        query = query.where(ConsentText.purpose == purpose.value)
    if language is not None:
        query = query.where(ConsentText.language == language)
    if active_only:
        query = query.where(ConsentText.active.is_(True))
    return list(session.scalars(query))


def get_text(session: Session, principal: Principal, text_id: int) -> ConsentText:
    principal.require(Permission.CONSENT_TEXTS_READ)
    text = session.get(ConsentText, text_id)
    if text is None:
        raise NotFoundError(f"no consent text with id {text_id}")
    return text


def active_for(session: Session, purpose: Purpose | str, language: str) -> ConsentText | None:
    """The text shown today for `purpose` in `language`, or None (no permission needed: the
    store readiness check and the enrollment pages read it)."""
    return session.scalar(
        select(ConsentText).where(
            ConsentText.purpose == str(purpose),
            ConsentText.language == language,
            ConsentText.active.is_(True),
        )
    )


def languages(session: Session, purpose: Purpose | str) -> list[str]:
    """The languages `purpose` has an active text in (what a customer may choose from)."""
    found = session.scalars(
        select(ConsentText.language).where(
            ConsentText.purpose == str(purpose), ConsentText.active.is_(True)
        )
    )
    return sorted(found)


def create_version(
    session: Session,
    principal: Principal,
    purpose: Purpose,
    language: str,
    body: str,
    version: str | None = None,
) -> ConsentText:
    """A new text for `purpose` in `language`; it replaces the active one (kept, inactive).

    The version label defaults to `YYYY-MM-vN` (N: one more than the texts of the purpose
    and language so far). A label already used for that purpose and language is a 409.
    """
    principal.require(Permission.CONSENT_TEXTS_WRITE)
    check_language(language)
    body = body.strip()
    if not body or len(body) > MAX_BODY:
        raise InvalidError(f"a consent text has 1 to {MAX_BODY} characters", reason="bad_text")
    same = (ConsentText.purpose == purpose.value) & (ConsentText.language == language)
    if version is None or not version.strip():
        count = len(list(session.scalars(select(ConsentText.id).where(same))))
        version = f"{datetime.now(UTC):%Y-%m}-v{count + 1}"
    version = version.strip()
    if not VERSION.match(version):
        raise InvalidError(
            "a version is 1 to 40 letters, digits, dots, dashes or underscores",
            reason="bad_consent_version",
        )
    if session.scalar(select(ConsentText.id).where(same, ConsentText.version == version)):
        raise ConflictError(f"version {version!r} exists for {purpose.value} in {language}")
    previous = active_for(session, purpose, language)
    session.execute(update(ConsentText).where(same).values(active=False))
    text = ConsentText(
        purpose=purpose.value,
        version=version,
        language=language,
        body=body,
        created_by=principal.label[:200],
        active=True,
    )
    session.add(text)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent edit took the same label
        raise ConflictError(f"version {version!r} exists for {purpose.value}") from exc
    audit.record(
        session,
        principal,
        "consent_text_create",
        purpose=purpose.value,
        language=language,
        version=version,
        text_id=text.id,
        replaces=previous.id if previous is not None else None,
    )
    return text


def resolve(
    session: Session,
    purpose: Purpose,
    *,
    text_id: int | None = None,
    version: str | None = None,
    language: str | None = None,
) -> ConsentText:
    """The text a consent is given on; it must exist, be active and be for `purpose`.

    Refusals are 422 with a reason: `unknown_consent_text` (no such id, or no text of that
    version in that language), `consent_text_inactive` (replaced since the page was shown:
    show the current one), `consent_text_purpose` (a text for another purpose),
    `no_consent_text` (no active text for the purpose in the language).
    """
    if text_id is not None:
        text = session.get(ConsentText, text_id)
        if text is None:
            raise InvalidError(f"no consent text with id {text_id}", reason="unknown_consent_text")
    elif version is not None:
        text = session.scalar(
            select(ConsentText).where(
                ConsentText.purpose == purpose.value,
                ConsentText.version == version,
                ConsentText.language == (language or "en"),
            )
        )
        if text is None:
            raise InvalidError(
                f"no {purpose.value} consent text of version {version!r} in {language or 'en'}",
                reason="bad_consent_version",
            )
    else:
        text = active_for(session, purpose, language or "en")
        if text is None:
            raise InvalidError(
                f"no active {purpose.value} consent text in {language or 'en'}",
                reason="no_consent_text",
            )
    if text.purpose != purpose.value:
        raise InvalidError(
            f"consent text {text.id} is for {text.purpose}, not {purpose.value}",
            reason="consent_text_purpose",
        )
    if not text.active:
        raise InvalidError(
            f"consent text {text.id} ({text.version}, {text.language}) has been replaced; "
            "show the current text",
            reason="consent_text_inactive",
        )
    return text
