"""Face payment: a customer's payment set-up, and the tills' payment sessions (crm.payments)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import Response

from facecrm.api.deps import CustomerReader, SessionDep, SettingsDep, allow
from facecrm.api.schemas import (
    PROBLEMS,
    PaymentProfileOut,
    PaymentSetupIn,
    PaymentUpdateIn,
    PaySessionIn,
    PaySessionOut,
)
from facecrm.crm import customers, payments
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import PaymentProfile

router = APIRouter(tags=["face payment"], responses=PROBLEMS)
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
    idempotency_key: IdempotencyKey = None,
) -> PaySessionOut:
    """A payment session for this till (POS devices): 201 when made, 200 with the same
    session for a retry with the same `Idempotency-Key` and body."""
    request = payments.SessionRequest(body.amount, body.currency, body.till, idempotency_key)
    row, created = payments.open_session(session, principal, request)
    if not created:
        response.status_code = 200
    return PaySessionOut.model_validate(row)


@router.get("/pay/sessions/{session_id}", response_model=PaySessionOut)
def get_session(session_id: SessionId, session: SessionDep, principal: Till) -> PaySessionOut:
    """A session of this device's store (another store's: 404); expired ones say so."""
    return PaySessionOut.model_validate(payments.get_session(session, principal, session_id))
