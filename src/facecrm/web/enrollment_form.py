"""The enrollment form shared by the console's enroll page and the kiosk: what it shows
(the chain's consent texts in every language, the store's options) and how a submitted
form becomes one `FaceCRM.enroll` call. The rules (text active and for the purpose,
minimum age, store and witness from the principal) are the crm's."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, Form, UploadFile
from sqlalchemy.orm import Session

from facecrm.api.uploads import read_image_upload
from facecrm.crm import consent_text, enrollment
from facecrm.crm.authz import Principal
from facecrm.crm.errors import InvalidError
from facecrm.crm.models import ConsentText, Customer, Purpose
from facecrm.crm.service import FaceCRM, Photo

LANGUAGE_NAMES = {"en": "English", "fr": "Français", "de": "Deutsch", "es": "Español"}


def store_of(principal: Principal, requested: str | None = None) -> str | None:
    """The store whose options a form shows: the one asked for if it is the principal's,
    else the principal's first (the crm decides the consent's store on submission)."""
    if requested and principal.may_act_in(requested):
        return requested
    return min(principal.stores) if principal.stores else None


def text_rows(found: Iterable[ConsentText]) -> list[dict[str, Any]]:
    """Consent texts as the forms show them (by language, each with its language's name)."""
    return [
        {
            "id": t.id,
            "language": t.language,
            "name": LANGUAGE_NAMES.get(t.language, t.language),
            "version": t.version,
            "body": t.body,
        }
        for t in sorted(found, key=lambda t: t.language)
    ]


def context(session: Session, principal: Principal, store_id: str | None) -> dict[str, Any]:
    """The form's texts (every active translation), first language and options."""
    options = enrollment.effective(session, store_id)
    found = consent_text.list_texts(
        session, principal, Purpose.IN_STORE_RECOGNITION, active_only=True
    )
    texts = text_rows(found)
    languages = [t["language"] for t in texts]
    first = options.language if options.language in languages else "en"
    return {"texts": texts, "language": first, "options": options, "store_id": store_id}


@dataclass(frozen=True, slots=True)
class EnrollForm:
    """A submitted enrollment form, as sent (checked by the crm, not here)."""

    name: str
    image: UploadFile
    consent: bool
    text_id: int | None
    consent_version: str
    email: str
    phone: str
    tier: str
    loyalty_id: str
    show_photo: bool
    age_confirmed: int | None
    store_id: str | None


def enroll_form(
    name: Annotated[str, Form(min_length=1, max_length=200)],
    image: Annotated[UploadFile, File()],
    consent: Annotated[bool, Form()] = False,
    text_id: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None,
    consent_version: Annotated[str, Form(max_length=40)] = "",  # older pages
    email: Annotated[str, Form(max_length=320)] = "",
    phone: Annotated[str, Form(max_length=40)] = "",
    tier: Annotated[str, Form(max_length=20)] = "",
    loyalty_id: Annotated[str, Form(max_length=64)] = "",
    show_photo: Annotated[bool, Form()] = False,
    age_confirmed: Annotated[int | None, Form(ge=0, le=150)] = None,
    store_id: Annotated[str, Form(max_length=32)] = "",
) -> EnrollForm:
    return EnrollForm(
        name,
        image,
        consent,
        text_id,
        consent_version,
        email,
        phone,
        tier,
        loyalty_id,
        show_photo,
        age_confirmed,
        store_id or None,
    )


EnrollFormDep = Annotated[EnrollForm, Depends(enroll_form)]


def submit(crm: FaceCRM, principal: Principal, form: EnrollForm, channel: str) -> Customer:
    """Create the customer, the consent on the text shown, and the template: all or nothing."""
    if not form.consent:
        raise InvalidError("the customer has not agreed to the consent text", reason="no_consent")
    text: int | str | None = form.text_id if form.text_id is not None else form.consent_version
    if not text:
        raise InvalidError("the form did not say which consent text was shown", reason="no_text")
    profile: dict[str, object] = {"show_photo": form.show_photo}
    for key in ("email", "phone", "loyalty_id", "tier"):
        value = getattr(form, key).strip()
        if value:
            profile[key] = value
    store_id = form.store_id  # named, for staff of several stores; else their one store
    if store_id is None and principal.stores is not None and len(principal.stores) == 1:
        store_id = next(iter(principal.stores))  # so that a refusal is audited with it
    photo = Photo(f"console:{channel}", read_image_upload(form.image, crm.settings))
    # a refused photo (EnrollmentError: 422 with the quality gate's reason) is api.problems'
    return crm.enroll(
        form.name,
        [photo],
        text,
        channel,
        principal=principal,
        profile=profile,
        store_id=store_id,
        age_confirmed=form.age_confirmed,
    )
