"""A store's set-up check (signage, consent text, retention), confirmed by an admin."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from facecrm.api.deps import SessionDep, SettingsDep, StoresReader, StoresWriter
from facecrm.api.schemas import PROBLEMS, ReadinessOut
from facecrm.crm import readiness
from facecrm.crm.readiness import Readiness

router = APIRouter(tags=["admin"], responses=PROBLEMS)
Item = Literal["signage", "consent_text", "retention"]


def readiness_out(state: Readiness, enforced: bool) -> ReadinessOut:
    return ReadinessOut.model_validate(
        {
            "store_id": state.store_id,
            "ready": state.ready,
            "enforced": enforced,
            "items": state.items,
        }
    )


@router.get("/stores/{store_id}/readiness", response_model=ReadinessOut)
def get_readiness(
    store_id: str, session: SessionDep, settings: SettingsDep, principal: StoresReader
) -> ReadinessOut:
    """Whether the store's set-up is confirmed, item by item (its staff, admins, auditors)."""
    state = readiness.status(session, principal, settings, store_id)
    return readiness_out(state, settings.require_store_readiness)


@router.post("/stores/{store_id}/readiness/{item}", response_model=ReadinessOut)
def confirm_readiness(
    store_id: str, item: Item, session: SessionDep, settings: SettingsDep, principal: StoresWriter
) -> ReadinessOut:
    """An administrator confirms one item as it is in force now (audited)."""
    state = readiness.confirm(session, principal, settings, store_id, item)
    return readiness_out(state, settings.require_store_readiness)
