"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from facecrm.crm.models import Purpose

Tier = Literal["standard", "silver", "gold", "vip"]
RowId = Annotated[int, PathParam(ge=1, le=2**53, description="a numeric id")]


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
    store_ids: list[str] = []
    display_name: str = ""


class PasswordIn(Strict):
    password: str = Field(min_length=8, max_length=200)


class StaffOut(BaseModel):
    id: str
    username: str
    role: str
    store_ids: list[str]


class DeviceIn(Strict):
    store_id: str
    kind: Literal["agent", "pos"]
    name: str = ""


class DeviceOut(BaseModel):
    id: str
    store_id: str
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    api_key: str | None = None  # only in the response that created it


class CustomerIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    preferred_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)
    loyalty_id: str | None = Field(default=None, max_length=64)
    tier: Tier = "standard"
    preferences: dict[str, object] = {}
    notes: str = Field(default="", max_length=10_000)
    preferred_advisor_id: str | None = None
    show_photo: bool = False


class CustomerPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    preferred_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)
    loyalty_id: str | None = Field(default=None, max_length=64)
    tier: Tier | None = None
    preferences: dict[str, object] | None = None
    notes: str | None = Field(default=None, max_length=10_000)
    preferred_advisor_id: str | None = None
    show_photo: bool | None = None


class ConsentIn(Strict):
    purpose: Purpose
    text_version: str = Field(min_length=1, max_length=40)
    channel: Literal["kiosk", "phone", "associate", "web", "cli"]
    store_id: str | None = None
    witness: str | None = Field(default=None, max_length=200)


class VisitIn(Strict):
    customer_id: str
    store_id: str
    at: datetime | None = None
    source: Literal["agent", "identify", "manual"] = "manual"
    similarity: float | None = Field(default=None, ge=-1, le=1)


class ItemIn(Strict):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    quantity: int = Field(gt=0, le=10_000)
    unit_price_cents: int = Field(ge=0, le=10**9)


class PurchaseIn(Strict):
    store_id: str
    items: list[ItemIn] = Field(min_length=1, max_length=500)
    currency: str = Field(default="EUR", min_length=3, max_length=3)
    at: datetime | None = None


class InterestIn(Strict):
    store_id: str
    product: str = Field(min_length=1, max_length=200)
    sku: str | None = Field(default=None, max_length=64)
    out_of_stock: bool = False


class InterestPatch(Strict):
    resolved: bool | None = None
    out_of_stock: bool | None = None


class FeedbackIn(Strict):
    store_id: str
    text: str = Field(default="", max_length=10_000)
    rating: int | None = Field(default=None, ge=1, le=5)


class FeedbackPatch(Strict):
    resolved: bool


class VerifyOut(BaseModel):
    customer_id: str
    match: bool
    similarity: float | None
    threshold: float
