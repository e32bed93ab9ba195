"""Identification (1:N, open-set) and verification (1:1)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from facecrm.api.deps import CrmDep, Identifier, Multipart, SessionDep
from facecrm.api.schemas import (
    PROBLEMS,
    BoxOut,
    IdentifiedCustomerOut,
    IdentifiedFaceOut,
    IdentifyOut,
    VerifyOut,
)
from facecrm.api.uploads import read_image_upload
from facecrm.crm import accounts
from facecrm.vision.image import decode_slot

router = APIRouter(tags=["recognition"], responses=PROBLEMS)


@router.post("/identify", response_model=IdentifyOut)
def identify(
    request: Request,
    image: Annotated[UploadFile, File()],
    crm: CrmDep,
    session: SessionDep,
    principal: Identifier,
    _: Multipart,
    store_id: Annotated[str | None, Form(max_length=32)] = None,
) -> IdentifyOut:
    """Every face in the photo with its box: an opted-in customer with similarity, or unknown."""
    started = time.perf_counter()
    if store_id is not None:
        principal.require_store(store_id)  # before any work on the photo
        accounts.get_store(session, store_id)
    # one slot (of `max_concurrent_decodes`, one per core) from the upload to the decisions:
    # the decoded photo is held by at most that many requests, and the CPU-bound pipeline
    # runs first come first served instead of every waiting request at a fraction of a core
    # (which cost ~20% more CPU a request at 4-8 clients and stretched every latency)
    with decode_slot(crm.settings):
        picture = read_image_upload(image, crm.settings)
        results = crm.identify(picture, principal=principal, store_id=store_id)
    faces = []
    for r in results:
        known = None
        if r.match is not None and r.customer_name is not None and r.tier is not None:
            known = IdentifiedCustomerOut(
                id=r.match.customer_id,
                name=r.customer_name,
                preferred_name=r.preferred_name,
                tier=r.tier,
                similarity=round(r.match.similarity, 4),
            )
        box = BoxOut(**r.face.box.as_dict())
        faces.append(
            IdentifiedFaceOut(
                box=box,
                customer=known or "unknown",
                reason=None if known else r.reason or "no_match",
            )
        )
    request.app.state.metrics.observe(
        "facecrm_identify_seconds", time.perf_counter() - started, "identify request latency"
    )
    return IdentifyOut(faces=faces, threshold=round(crm.first_threshold, 4))


@router.post("/verify", response_model=VerifyOut)
def verify(
    customer_id: Annotated[str, Form(max_length=32)],
    image: Annotated[UploadFile, File()],
    crm: CrmDep,
    principal: Identifier,
    _: Multipart,
) -> VerifyOut:
    """Is the photo this customer? (1:1 against all their templates)"""
    result = crm.verify(customer_id, read_image_upload(image, crm.settings), principal=principal)
    return VerifyOut(
        customer_id=customer_id,
        match=result.match,
        threshold=result.threshold,
        similarity=None if result.similarity is None else round(result.similarity, 4),
    )
