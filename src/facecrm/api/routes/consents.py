"""Consent texts (versioned, translated, owned by the chain) and enrollment options."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from facecrm.api.deps import SessionDep, allow
from facecrm.api.schemas import (
    PROBLEMS,
    ConsentTextIn,
    ConsentTextOut,
    EnrollmentOptionsIn,
    EnrollmentOptionsOut,
    RowId,
)
from facecrm.crm import consent_text, enrollment
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import Purpose

router = APIRouter(tags=["consents"], responses=PROBLEMS)

TextReader = Annotated[Principal, Depends(allow(Permission.CONSENT_TEXTS_READ))]
TextWriter = Annotated[Principal, Depends(allow(Permission.CONSENT_TEXTS_WRITE))]
EnrollmentConfigurer = Annotated[Principal, Depends(allow(Permission.ENROLLMENT_CONFIG))]
Scope = Annotated[str, Path(min_length=1, max_length=32, description="`*` or a store id")]


@router.get("/consent-texts", response_model=list[ConsentTextOut])
def list_texts(
    session: SessionDep,
    principal: TextReader,
    purpose: Purpose | None = None,
    language: Annotated[str | None, Query(min_length=2, max_length=16)] = None,
    active: bool = False,
) -> list[ConsentTextOut]:
    """Every version of every text (newest first); `active=true`: the texts shown today."""
    found = consent_text.list_texts(session, principal, purpose, language, active_only=active)
    return [ConsentTextOut.model_validate(t) for t in found]


@router.get("/consent-texts/{text_id}", response_model=ConsentTextOut)
def get_text(text_id: RowId, session: SessionDep, principal: TextReader) -> ConsentTextOut:
    return ConsentTextOut.model_validate(consent_text.get_text(session, principal, text_id))


@router.post("/consent-texts", status_code=201, response_model=ConsentTextOut)
def create_text(body: ConsentTextIn, session: SessionDep, principal: TextWriter) -> ConsentTextOut:
    """A new version (admins): it becomes the text shown for its purpose and language."""
    text = consent_text.create_version(
        session, principal, body.purpose, body.language, body.body, body.version
    )
    return ConsentTextOut.model_validate(text)


@router.get("/enrollment-options/{scope}", response_model=EnrollmentOptionsOut)
def get_options(
    scope: Scope, session: SessionDep, principal: EnrollmentConfigurer
) -> EnrollmentOptionsOut:
    """The options in force at `scope` (`*`: the chain's defaults)."""
    enrollment.overrides(session, principal, scope)  # permission and scope checks
    store = None if scope == enrollment.CHAIN else scope
    return EnrollmentOptionsOut.model_validate(enrollment.effective(session, store))


@router.put("/enrollment-options/{scope}", response_model=EnrollmentOptionsOut)
def set_options(
    scope: Scope, body: EnrollmentOptionsIn, session: SessionDep, principal: EnrollmentConfigurer
) -> EnrollmentOptionsOut:
    """Set the fields sent (null: inherit the chain's) at `scope`; the rest stay."""
    values = body.model_dump(exclude_unset=True)
    return EnrollmentOptionsOut.model_validate(
        enrollment.configure(session, principal, scope, values)
    )
