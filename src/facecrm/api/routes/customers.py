"""Customers, consents, faces, export and erasure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile

from facecrm.api.deps import allow, charge_identification, get_crm, multipart
from facecrm.api.problems import ApiError
from facecrm.api.schemas import ConsentIn, CustomerIn, CustomerPatch, CustomerSummary
from facecrm.api.uploads import read_image_upload
from facecrm.crm import accounts, cards, customers, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.customers import ConsentGrant, consent_dict, profile
from facecrm.crm.models import Purpose
from facecrm.crm.service import FaceCRM, Photo

router = APIRouter(tags=["customers"])
Read = Depends(allow(Permission.CUSTOMERS_READ))
Write = Depends(allow(Permission.CUSTOMERS_WRITE))


@router.post("/customers", status_code=201)
def create_customer(
    body: CustomerIn, crm: FaceCRM = Depends(get_crm), principal: Principal = Write
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        return profile(customers.create(session, principal, body.model_dump(mode="json")))


@router.get("/customers", response_model=list[CustomerSummary])
def search_customers(
    q: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Read,
) -> list[dict[str, Any]]:
    """Summaries for picking the right person; the card is `GET /customers/{id}`."""
    with db.transaction(crm.sessions) as session:
        return customers.find(session, principal, q, limit, offset)


@router.get("/customers/{customer_id}")
def get_customer(
    customer_id: str, crm: FaceCRM = Depends(get_crm), principal: Principal = Read
) -> dict[str, Any]:
    """The staff card (the lookup is audited)."""
    with db.transaction(crm.sessions) as session:
        return cards.card(session, principal, customer_id)


@router.patch("/customers/{customer_id}")
def update_customer(
    customer_id: str,
    body: CustomerPatch,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Write,
) -> dict[str, Any]:
    values = body.model_dump(mode="json", exclude_unset=True)
    if "name" in values and values["name"] is None:
        raise ApiError(422, "the name cannot be removed")
    with db.transaction(crm.sessions) as session:
        return profile(customers.update(session, principal, customer_id, values))


@router.delete("/customers/{customer_id}", status_code=204)
def erase_customer(
    customer_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.CUSTOMERS_ERASE)),
) -> Response:
    """Erase everything about the customer; they are unknown to search at once."""
    crm.delete_customer(customer_id, principal)
    return Response(status_code=204)


@router.get("/customers/{customer_id}/export")
def export_customer(
    customer_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.CUSTOMERS_EXPORT)),
) -> dict[str, Any]:
    """Everything held about the customer (data-subject access)."""
    with db.transaction(crm.sessions) as session:
        return customers.export(session, principal, customer_id)


@router.post("/customers/{customer_id}/consents", status_code=201)
def give_consent(
    customer_id: str,
    body: ConsentIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Write,
) -> dict[str, Any]:
    if body.store_id is not None:
        principal.require_store(body.store_id)
    grant = ConsentGrant(body.purpose, body.text_version, body.channel, body.store_id, body.witness)
    with db.transaction(crm.sessions) as session:
        if body.store_id is not None:
            accounts.get_store(session, body.store_id)
        return consent_dict(customers.give_consent(session, principal, customer_id, grant))


@router.delete("/customers/{customer_id}/consents/{purpose}", status_code=204)
def withdraw_consent(
    customer_id: str,
    purpose: Purpose,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Write,
) -> Response:
    """Withdraw a consent; withdrawing recognition deletes the templates at once."""
    crm.withdraw(customer_id, purpose, principal)
    return Response(status_code=204)


@router.post("/customers/{customer_id}/faces", status_code=201)
def add_face(
    request: Request,
    customer_id: str,
    image: Annotated[UploadFile, File()],
    keep_photo: Annotated[bool, Form()] = False,
    override: Annotated[bool, Form()] = False,
    reason: Annotated[str, Form(max_length=500)] = "",
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Write,
    _: None = Depends(multipart),  # after the permission
) -> dict[str, Any]:
    """Enroll a photo: a template id and its quality, or a problem with its `reason`.

    422 `face_mismatch` when the photo is not the customer's face (a manager may
    send `override=true` with a `reason`), 409 `already_enrolled` when the face
    belongs to another customer, 422 with the quality gate's reason otherwise.
    Charged against the staff identification limit: the duplicate check answers
    "is this face enrolled?", so it must not be an unlimited way to ask.
    """
    charge_identification(request, principal)
    if override:
        principal.require(Permission.FACES_OVERRIDE)  # before reading the upload
    photo = Photo(image.filename or "upload", read_image_upload(image, crm.settings))
    (template,) = crm.add_photos(
        customer_id,
        [photo],
        principal,
        keep_photo=keep_photo,
        override_reason=reason if override else None,
    )
    return {"template_id": template.id, "model_id": template.model_id, "quality": template.quality}


@router.get("/customers/{customer_id}/photo", responses={200: {"content": {"image/jpeg": {}}}})
def customer_photo(
    customer_id: str, crm: FaceCRM = Depends(get_crm), principal: Principal = Read
) -> Response:
    """The enrollment photo, only where the customer agreed to it being shown."""
    jpeg = crm.view_photo(principal, customer_id, channel="api")
    if jpeg is None:
        raise ApiError(404, "no photo to show for this customer")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
