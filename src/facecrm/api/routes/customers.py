"""Customers, consents, faces, export and erasure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from facecrm.api.deps import (
    CrmDep,
    CustomerEraser,
    CustomerExporter,
    CustomerImporter,
    CustomerReader,
    CustomerWriter,
    Multipart,
    SessionDep,
    charge_identification,
)
from facecrm.api.problems import ApiError
from facecrm.api.schemas import (
    PROBLEMS,
    CardOut,
    ConsentIn,
    ConsentOut,
    CsvResponse,
    CustomerIn,
    CustomerOut,
    CustomerPatch,
    CustomerSummary,
    ExportOut,
    FaceAddedOut,
    ImportReportOut,
    JpegResponse,
    WithdrawalChannel,
)
from facecrm.api.uploads import read_image_upload
from facecrm.crm import cards, customers, imports
from facecrm.crm.authz import Permission
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.models import Purpose
from facecrm.crm.service import Photo

router = APIRouter(tags=["customers"], responses=PROBLEMS)


@router.post("/customers", status_code=201, response_model=CustomerOut)
def create_customer(
    body: CustomerIn, session: SessionDep, principal: CustomerWriter
) -> CustomerOut:
    customer = customers.create(session, principal, body.model_dump(mode="json"))
    return CustomerOut.model_validate(customer)


@router.post("/customers/import", response_model=ImportReportOut)
async def import_customers(
    request: Request,
    crm: CrmDep,
    principal: CustomerImporter,
    dry_run: bool = False,
    atomic: bool = False,
) -> ImportReportOut:
    """Import a CRM's CSV (`text/csv`, or multipart with the field `file`); admins only.

    The report lists every refused row (row, column, message); see `crm/imports.py`.
    The import owns its transactions (a report is audited even when nothing is applied).
    """
    data = await _csv_body(request)
    report = await run_in_threadpool(
        imports.import_csv, crm.sessions, principal, data, dry_run=dry_run, atomic=atomic
    )
    return ImportReportOut.model_validate(report)


async def _csv_body(request: Request) -> bytes:
    """The CSV, read at most `imports.MAX_BYTES` (+ multipart overhead) into memory."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in {"text/csv", "multipart/form-data"}:
        raise ApiError(415, "send the CSV as text/csv or multipart/form-data (field 'file')")
    limit = imports.MAX_BYTES + 64 * 1024
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "the file is too large", "too_large")
    if kind == "text/csv":
        return bytes(body)
    form = await Request(request.scope, _replay(bytes(body))).form(max_files=1, max_fields=0)
    upload = form.get("file")
    if not isinstance(upload, StarletteUpload):
        raise ApiError(422, "the multipart body needs a file field 'file'")
    return await upload.read()


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


@router.get("/customers/export.csv", response_class=CsvResponse)
def export_customers_csv(session: SessionDep, principal: CustomerExporter) -> CsvResponse:
    """Every customer's CRM fields as CSV (the columns the import takes, plus `id`)."""
    headers = {
        "Cache-Control": "no-store",
        "Content-Disposition": 'attachment; filename="customers.csv"',
    }
    text = imports.export_csv(session, principal)
    return CsvResponse(text, headers=headers)


@router.get("/customers", response_model=list[CustomerSummary])
def search_customers(
    session: SessionDep,
    principal: CustomerReader,
    q: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[CustomerSummary]:
    """Summaries for picking the right person; the card is `GET /customers/{id}`."""
    found = customers.find(session, principal, q, limit, offset)
    return [CustomerSummary.model_validate(c) for c in found]


@router.get("/customers/{customer_id}", response_model=CardOut)
def get_customer(customer_id: str, session: SessionDep, principal: CustomerReader) -> CardOut:
    """The staff card (the lookup is audited)."""
    return CardOut.model_validate(cards.card(session, principal, customer_id))


@router.patch("/customers/{customer_id}", response_model=CustomerOut)
def update_customer(
    customer_id: str, body: CustomerPatch, session: SessionDep, principal: CustomerWriter
) -> CustomerOut:
    values = body.model_dump(mode="json", exclude_unset=True)
    if "name" in values and values["name"] is None:
        raise ApiError(422, "the name cannot be removed")
    return CustomerOut.model_validate(customers.update(session, principal, customer_id, values))


@router.delete("/customers/{customer_id}", status_code=204)
def erase_customer(customer_id: str, crm: CrmDep, principal: CustomerEraser) -> Response:
    """Erase everything about the customer; they are unknown to search at once."""
    crm.delete_customer(customer_id, principal=principal)
    return Response(status_code=204)


@router.get("/customers/{customer_id}/export", response_model=ExportOut)
def export_customer(
    customer_id: str, session: SessionDep, principal: CustomerExporter
) -> ExportOut:
    """Everything held about the customer (data-subject access)."""
    return ExportOut.model_validate(customers.export(session, principal, customer_id))


@router.post("/customers/{customer_id}/consents", status_code=201, response_model=ConsentOut)
def give_consent(
    customer_id: str, body: ConsentIn, session: SessionDep, principal: CustomerWriter
) -> ConsentOut:
    """Record a consent on the text shown (`text_id`, or the current one); the store and
    the witness are the caller's (see `ConsentIn`)."""
    if body.text_id is not None and body.text_version is not None:
        raise ApiError(422, "name the text by text_id or by text_version, not both")
    grant = ConsentGrant(
        body.purpose,
        body.text_id if body.text_id is not None else body.text_version,
        body.channel,
        body.store_id,
        language=body.language,
        age_confirmed=body.age_confirmed,
    )
    return ConsentOut.model_validate(customers.give_consent(session, principal, customer_id, grant))


@router.delete("/customers/{customer_id}/consents/{purpose}", status_code=204)
def withdraw_consent(
    customer_id: str,
    purpose: Purpose,
    crm: CrmDep,
    principal: CustomerWriter,
    channel: Annotated[WithdrawalChannel, Query()] = "api",
    store_id: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
) -> Response:
    """Withdraw a consent; withdrawing recognition deletes the templates at once. The
    withdrawal records the caller, its store (`store_id` picks one of the caller's own)
    and the channel."""
    crm.withdraw(customer_id, purpose, principal=principal, channel=channel, store_id=store_id)
    return Response(status_code=204)


@router.post("/customers/{customer_id}/faces", status_code=201, response_model=FaceAddedOut)
def add_face(
    request: Request,
    customer_id: str,
    image: Annotated[UploadFile, File()],
    crm: CrmDep,
    principal: CustomerWriter,
    _: Multipart,  # after the permission
    keep_photo: Annotated[bool, Form()] = False,
    override: Annotated[bool, Form()] = False,
    reason: Annotated[str, Form(max_length=500)] = "",
) -> FaceAddedOut:
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
        principal=principal,
        keep_photo=keep_photo,
        override_reason=reason if override else None,
    )
    return FaceAddedOut(
        template_id=template.id, model_id=template.model_id, quality=template.quality
    )


@router.get("/customers/{customer_id}/photo", response_class=JpegResponse)
def customer_photo(customer_id: str, crm: CrmDep, principal: CustomerReader) -> JpegResponse:
    """The enrollment photo, only where the customer agreed to it being shown."""
    jpeg = crm.view_photo(principal, customer_id, channel="api")
    if jpeg is None:
        raise ApiError(404, "no photo to show for this customer")
    return JpegResponse(jpeg, headers={"Cache-Control": "no-store"})
