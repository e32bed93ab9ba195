"""Face payment: a customer's payment set-up, and the tills' payment sessions (crm.payments)."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Path, Request, UploadFile
from fastapi.responses import Response

from facecrm.api.deps import CustomerReader, SessionDep, SettingsDep, allow
from facecrm.api.schemas import (
    PROBLEMS,
    AuthorisationKeyOut,
    ConfirmIn,
    FacePaymentOut,
    PaymentProfileOut,
    PaymentSetupIn,
    PaymentUpdateIn,
    PaySessionIn,
    PaySessionOut,
    StepUpIn,
)
from facecrm.crm import customers, payflow, payments
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import PaymentProfile

router = APIRouter(tags=["face payment"], responses=PROBLEMS)


def get_payflow(request: Request) -> payflow.PayFlow:
    return request.app.state.payflow  # type: ignore[no-any-return]


Flow = Annotated[payflow.PayFlow, Depends(get_payflow)]
PaymentEnroller = Annotated[Principal, Depends(allow(Permission.PAYMENTS_ENROLL))]
Till = Annotated[Principal, Depends(allow(Permission.PAY))]
SessionId = Annotated[str, Path(min_length=1, max_length=32)]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=100)
]


def _profile_out(session: SessionDep, profile: PaymentProfile) -> PaymentProfileOut:
    customer = customers.load(session, profile.customer_id)
    return PaymentProfileOut(
        customer_id=profile.customer_id,
        provider=profile.provider,
        token_hint=profile.token[-4:],
        currency=profile.currency,
        limit_per_transaction=profile.limit_per_transaction,
        limit_per_day=profile.limit_per_day,
        payable=payments.payable(customer, profile) is None,
        created_at=profile.created_at,
        updated_at=profile.updated_at,
    )


@router.get("/customers/{customer_id}/payment", response_model=PaymentProfileOut)
def get_payment(
    customer_id: str, session: SessionDep, principal: CustomerReader
) -> PaymentProfileOut:
    """The customer's payment set-up, and whether a till may take their face now."""
    return _profile_out(session, payments.get_profile(session, principal, customer_id))


@router.post("/customers/{customer_id}/payment", status_code=201, response_model=PaymentProfileOut)
def enroll_payment(
    customer_id: str,
    body: PaymentSetupIn,
    session: SessionDep,
    settings: SettingsDep,
    principal: PaymentEnroller,
) -> PaymentProfileOut:
    """Set the customer up for face payment (both consents needed; staff: customer present)."""
    setup = payments.PaymentSetup(**body.model_dump(exclude={"customer_present"}))
    profile = payments.enroll(
        session, settings, principal, customer_id, setup, customer_present=body.customer_present
    )
    return _profile_out(session, profile)


@router.patch("/customers/{customer_id}/payment", response_model=PaymentProfileOut)
def update_payment(
    customer_id: str,
    body: PaymentUpdateIn,
    session: SessionDep,
    settings: SettingsDep,
    principal: PaymentEnroller,
) -> PaymentProfileOut:
    setup = payments.PaymentSetup(**body.model_dump(exclude={"customer_present"}))
    profile = payments.update(
        session, settings, principal, customer_id, setup, customer_present=body.customer_present
    )
    return _profile_out(session, profile)


@router.delete("/customers/{customer_id}/payment", status_code=204)
def remove_payment(customer_id: str, session: SessionDep, principal: PaymentEnroller) -> Response:
    """Delete the payment set-up (the consent stays: withdraw it to stop for good)."""
    payments.remove(session, principal, customer_id)
    return Response(status_code=204)


@router.post("/pay/sessions", status_code=201, response_model=PaySessionOut)
def open_session(
    body: PaySessionIn,
    response: Response,
    session: SessionDep,
    principal: Till,
    flow: Flow,
    idempotency_key: IdempotencyKey = None,
) -> PaySessionOut:
    """A payment session for this till (POS devices): 201 when made, 200 with the same
    session, as it is now, for a retry with the same `Idempotency-Key` and body."""
    request = payments.SessionRequest(body.amount, body.currency, body.till, idempotency_key)
    row, created = payments.open_session(session, principal, request)
    if not created:
        response.status_code = 200
    return PaySessionOut.model_validate(flow.view(row))


@router.get("/pay/sessions/{session_id}", response_model=PaySessionOut)
def get_session(
    session_id: SessionId, session: SessionDep, principal: Till, flow: Flow
) -> PaySessionOut:
    """A session of this device's store (another store's: 404); expired ones say so."""
    return PaySessionOut.model_validate(
        flow.view(payments.get_session(session, principal, session_id))
    )


@router.post("/pay/sessions/{session_id}/frames", response_model=PaySessionOut)
def send_frames(
    session_id: SessionId,
    frames: Annotated[list[UploadFile], File()],
    at_ms: Annotated[list[int], Form()],
    principal: Till,
    flow: Flow,
) -> PaySessionOut:
    """A burst of camera frames (docs/face-checkout.md): `looking` finds the customer,
    `challenge` checks the smile after the prompt; answers the session as it now is."""
    budget = payflow.MAX_BURST_BYTES
    data: list[bytes] = []
    for upload in frames[: payflow.MAX_BURST_FRAMES + 1]:  # more: refused by the count
        if budget < 0:
            break
        data.append(upload.file.read(budget + 1))  # never more than the burst's cap
        budget -= len(data[-1])
    if len(frames) > payflow.MAX_BURST_FRAMES:
        data.extend(b"" for _ in range(len(frames) - len(data)))
    return PaySessionOut.model_validate(flow.frames(principal, session_id, data, at_ms))


@router.post("/pay/sessions/{session_id}/step-up", response_model=PaySessionOut)
def step_up(session_id: SessionId, body: StepUpIn, principal: Till, flow: Flow) -> PaySessionOut:
    """The last 4 digits of the customer's phone (409 when the session is not in step_up)."""
    return PaySessionOut.model_validate(flow.step_up(principal, session_id, body.digits))


@router.post("/pay/sessions/{session_id}/cancel", response_model=PaySessionOut)
def cancel(session_id: SessionId, principal: Till, flow: Flow) -> PaySessionOut:
    """ "Pay another way": declined `cancelled` (a final session comes back unchanged)."""
    return PaySessionOut.model_validate(flow.cancel(principal, session_id))


@router.post("/pay/sessions/{session_id}/confirm", response_model=PaySessionOut)
def confirm(session_id: SessionId, body: ConfirmIn, principal: Till, flow: Flow) -> PaySessionOut:
    """The POS charged the authorisation: the purchase is recorded on the customer, once."""
    items = [payflow.ConfirmedItem(**item.model_dump()) for item in body.items]
    view = flow.confirm(principal, session_id, body.provider_reference, items)
    return PaySessionOut.model_validate(view)


@router.get("/pay/authorisation-key", response_model=AuthorisationKeyOut)
def authorisation_key(principal: Till, flow: Flow) -> AuthorisationKeyOut:
    """The Ed25519 public key that verifies this server's payment authorisations."""
    key = base64.b64encode(flow.public_key()).decode()
    return AuthorisationKeyOut(algorithm="Ed25519", public_key=key)


@router.get("/customers/{customer_id}/face-payments", response_model=list[FacePaymentOut])
def face_payments(
    customer_id: str, session: SessionDep, principal: CustomerReader
) -> list[FacePaymentOut]:
    """The customer's face payment sessions, newest first (at most 100)."""
    rows = payflow.face_payments(session, principal, customer_id)
    return [FacePaymentOut.model_validate(row) for row in rows]
