"""Console pages for the chain's consent texts: every version and translation, and the
editor (admins) -- saving an edit publishes a new version; the old one stays, unchanged,
for the consents that point at it (`crm.consent_text`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from facecrm.api.deps import SessionDep
from facecrm.api.schemas import ConsentTextOut
from facecrm.crm import consent_text
from facecrm.crm.authz import Permission
from facecrm.crm.models import Purpose
from facecrm.web.console import Staff, _json, check_csrf, render

router = APIRouter(prefix="/console/consent-texts", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def texts_page(request: Request, session: SessionDep, principal: Staff) -> Response:
    rows = [_json(ConsentTextOut, t) for t in consent_text.list_texts(session, principal)]
    return render(
        request,
        "consent_texts.html",
        principal,
        texts=rows,
        can_edit=principal.can(Permission.CONSENT_TEXTS_WRITE),
        purposes=[p.value for p in Purpose],
    )


@router.get("/edit", response_class=HTMLResponse)
def edit_page(
    request: Request,
    session: SessionDep,
    principal: Staff,
    purpose: Purpose = Purpose.IN_STORE_RECOGNITION,
    language: str = "en",
) -> Response:
    """The editor, filled with the active text of `purpose` in `language` (if any)."""
    principal.require(Permission.CONSENT_TEXTS_WRITE)
    language = consent_text.check_language(language[:16])
    current = consent_text.active_for(session, purpose, language)
    return render(
        request,
        "consent_text_edit.html",
        principal,
        purpose=purpose.value,
        language=language,
        current=_json(ConsentTextOut, current) if current else None,
    )


@router.post("")
def publish(
    request: Request,
    session: SessionDep,
    principal: Staff,
    purpose: Annotated[Purpose, Form()],
    language: Annotated[str, Form(min_length=2, max_length=16)],
    body: Annotated[str, Form(min_length=1, max_length=20_000)],
    version: Annotated[str, Form(max_length=40)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Publish a new version (it becomes the text shown for its purpose and language)."""
    check_csrf(request, csrf)
    consent_text.create_version(session, principal, purpose, language, body, version or None)
    return RedirectResponse("/console/consent-texts", status_code=303)
