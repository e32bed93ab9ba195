"""Request and response bodies of the REST API.

Request bodies are bounded and not coerced: every string has a maximum length,
every list and dict a maximum size; integers and booleans must be JSON numbers
and booleans (`"2"` is not a quantity, `1` is not `true`); times must carry a
time zone offset (they are stored in UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Path as PathParam
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.functional_validators import AfterValidator

from facecrm.crm.consent_text import TEXTS
from facecrm.crm.models import Purpose

Tier = Literal["standard", "silver", "gold", "vip"]
# numeric ids are INTEGER columns: 32-bit on PostgreSQL, so a larger id is a 422, not a 500
RowId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="a numeric id")]
Id = Annotated[str, Field(min_length=1, max_length=32)]
Text = Annotated[str, Field(max_length=200)]
PreferenceKey = Annotated[str, Field(min_length=1, max_length=64)]
# a preference is a value or a short list of values, never a nested structure (a deeply
# nested one cost a 500 in serialisation): {"size": "38", "colours": ["red", "navy"]}
PreferenceScalar = (
    Annotated[StrictStr, Field(max_length=200)] | StrictInt | StrictFloat | StrictBool
)
PreferenceValue = PreferenceScalar | Annotated[list[PreferenceScalar], Field(max_length=20)] | None
Preferences = Annotated[dict[PreferenceKey, PreferenceValue], Field(max_length=50)]  # see crm
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _utc_in_range(value: datetime) -> datetime:
    """In UTC, and within what every database stores (near year 1 or 9999 an offset
    overflows the conversion: a 500 before this check)."""
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"the time must be between {EARLIEST.year} and {LATEST.year}")
    return utc


Moment = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]  # bodies: offset required
Instant = Annotated[datetime, AfterValidator(_utc_in_range)]  # query filters: naive is UTC
Similarity = Annotated[StrictFloat, Field(ge=-1, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Me(BaseModel):
    kind: str
    id: str
    name: str
    role: str
    stores: list[str] | None


class StoreIn(Strict):
    code: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=200)


class StoreOut(BaseModel):
    id: str
    code: str
    name: str


class StaffIn(Strict):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=200)
    role: Literal["admin", "manager", "associate", "auditor"]
    store_ids: list[Id] = Field(default=[], max_length=100)
    display_name: Text = ""


class PasswordIn(Strict):
    password: str = Field(min_length=8, max_length=200)


class StaffOut(BaseModel):
    id: str
    username: str
    role: str
    store_ids: list[str]


class DeviceIn(Strict):
    store_id: Id
    kind: Literal["agent", "pos"]
    name: Text = ""


class DeviceOut(BaseModel):
    id: str
    store_id: str
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class NewDeviceOut(DeviceOut):
    """Only the response that created the device carries its key (stored as a hash only)."""

    api_key: str


class CustomerIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    preferred_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)
    loyalty_id: str | None = Field(default=None, max_length=64)
    tier: Tier = "standard"
    preferences: Preferences = {}
    notes: str = Field(default="", max_length=10_000)
    preferred_advisor_id: Id | None = None
    show_photo: StrictBool = False


class CustomerSummary(BaseModel):
    """A search result: enough to pick the right person; the card has the rest."""

    id: str
    name: str
    preferred_name: str | None
    tier: str
    loyalty_id: str | None


class CustomerPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    preferred_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)
    loyalty_id: str | None = Field(default=None, max_length=64)
    tier: Tier | None = None
    preferences: Preferences | None = None
    notes: str | None = Field(default=None, max_length=10_000)
    preferred_advisor_id: Id | None = None
    show_photo: StrictBool | None = None


class ConsentIn(Strict):
    purpose: Purpose
    text_version: str = Field(min_length=1, max_length=40)
    channel: Literal["kiosk", "phone", "associate", "web", "cli"]
    store_id: Id | None = None
    witness: str | None = Field(default=None, max_length=200)

    @field_validator("text_version")
    @classmethod
    def _known_text(cls, value: str) -> str:
        """A consent is only as good as the text shown: it must be one this server has."""
        if value not in TEXTS:
            raise ValueError(f"unknown consent text version; known: {', '.join(sorted(TEXTS))}")
        return value


class VisitIn(Strict):
    customer_id: Id
    store_id: Id
    at: Moment | None = None  # not in the future (crm.activity.check_time)
    source: Literal["agent", "identify", "manual"] = "manual"  # per principal kind
    similarity: Similarity | None = None


class ItemIn(Strict):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    quantity: StrictInt = Field(ge=1, le=10_000)
    unit_price_cents: StrictInt = Field(ge=0, le=10**9)  # the total too (crm.activity)


class PurchaseIn(Strict):
    store_id: Id
    items: list[ItemIn] = Field(min_length=1, max_length=500)
    currency: str = Field(default="EUR", pattern="^[A-Za-z]{3}$")
    at: Moment | None = None


class InterestIn(Strict):
    store_id: Id
    product: str = Field(min_length=1, max_length=200)
    sku: str | None = Field(default=None, max_length=64)
    out_of_stock: StrictBool = False


class InterestPatch(Strict):
    resolved: StrictBool | None = None
    out_of_stock: StrictBool | None = None


class FeedbackIn(Strict):
    store_id: Id
    text: str = Field(default="", max_length=10_000)
    rating: StrictInt | None = Field(default=None, ge=1, le=5)


class FeedbackPatch(Strict):
    resolved: StrictBool


class VerifyOut(BaseModel):
    customer_id: str
    match: bool
    similarity: float | None
    threshold: float
