"""Identification (1:N, open-set) and verification (1:1)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from sqlalchemy import select

from facecrm.api.deps import get_crm, identifier, multipart
from facecrm.api.schemas import VerifyOut
from facecrm.api.uploads import read_image_upload
from facecrm.crm import accounts
from facecrm.crm.authz import Principal
from facecrm.crm.models import Customer
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["recognition"])
Upload = Depends(multipart)  # last parameter: checked after the permission


@router.post("/identify")
def identify(
    request: Request,
    image: Annotated[UploadFile, File()],
    store_id: Annotated[str | None, Form(max_length=32)] = None,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(identifier),
    _: None = Upload,
) -> dict[str, Any]:
    """Every face in the photo with its box: an opted-in customer with similarity, or unknown."""
    started = time.perf_counter()
    if store_id is not None:
        principal.require_store(store_id)  # before any work on the photo
    picture = read_image_upload(image, crm.settings)
    if store_id is not None:
        with crm.sessions() as session:
            accounts.get_store(session, store_id)
    results = crm.identify(picture, principal, store_id)
    ids = [r.match.customer_id for r in results if r.match]
    with crm.sessions() as session:
        found = {c.id: c for c in session.scalars(select(Customer).where(Customer.id.in_(ids)))}
    faces = []
    for r in results:
        entry: dict[str, Any] = {"box": r.face.box.as_dict()}
        if r.match and r.match.customer_id in found:
            c = found[r.match.customer_id]
            entry["customer"] = {
                "id": c.id,
                "name": c.name,
                "preferred_name": c.preferred_name,
                "tier": c.tier,
                "similarity": round(r.match.similarity, 4),
            }
        else:
            entry["customer"] = "unknown"
        faces.append(entry)
    request.app.state.metrics.observe(
        "facecrm_identify_seconds", time.perf_counter() - started, "identify request latency"
    )
    return {"faces": faces, "threshold": round(crm.threshold, 4)}


@router.post("/verify", response_model=VerifyOut)
def verify(
    customer_id: Annotated[str, Form(max_length=32)],
    image: Annotated[UploadFile, File()],
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(identifier),
    _: None = Upload,
) -> VerifyOut:
    """Is the photo this customer? (1:1 against all their templates)"""
    result = crm.verify(customer_id, read_image_upload(image, crm.settings), principal)
    return VerifyOut(
        customer_id=customer_id,
        match=result.match,
        threshold=result.threshold,
        similarity=None if result.similarity is None else round(result.similarity, 4),
    )
