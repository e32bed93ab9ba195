"""Request and response bodies of the REST API.

Responses are `*Out` models (`from_attributes`: built from the ORM rows and dataclasses
the crm layer returns), so the OpenAPI schema documents every response and FastAPI
checks each one against it; errors are `Problem` (application/problem+json).

Request bodies are bounded and not coerced: every string has a maximum length,
every list and dict a maximum size; integers and booleans must be JSON numbers
and booleans (`"2"` is not a quantity, `1` is not `true`); times must carry a
time zone offset (they are stored in UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    JsonValue,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    computed_field,
)
from pydantic.functional_validators import AfterValidator

from facecrm.alerts.rules import RuleSettings
from facecrm.crm.models import Purpose

Tier = Literal["standard", "silver", "gold", "vip"]
WithdrawalChannel = Literal["api", "kiosk", "phone", "associate", "web", "cli"]
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
    model_config = ConfigDict(from_attributes=True)

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
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    role: str
    store_ids: list[str]
    display_name: str = ""
    active: bool = True


class StaffStatusOut(StaffOut):
    """An account in the staff list, with its log-in lock and whether the caller may
    change it (a manager: associates of their own stores only)."""

    locked_seconds: float  # the log-in back-off still running (0: none)
    manageable: bool


class StoresIn(Strict):
    store_ids: list[Id] = Field(max_length=100)


class UnlockedOut(BaseModel):
    username: str
    was_locked: bool


class DeviceIn(Strict):
    store_id: Id
    kind: Literal["agent", "pos", "kiosk"]
    name: Text = ""


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    store_id: str
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_seen_at: datetime | None = None  # the device's latest request
    agent_version: str | None = None  # as the agent reports it (X-Facecrm-Agent-Version)
    queue_depth: int | None = None  # events waiting in the agent's outbox, as reported


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

    model_config = ConfigDict(from_attributes=True)

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
    """A consent: the text shown (`text_id`; or `text_version` from older clients; or
    neither: the current text in `language`, else the store's language), the channel.

    The store and the witness are the caller's (its log-in or device key), never the
    body's: `store_id` only picks one of the caller's own stores, and `witness` is refused.
    `age_confirmed`: the age the customer confirmed being at least, where the store asks.
    """

    purpose: Purpose
    text_id: StrictInt | None = Field(default=None, ge=1, le=2**31 - 1)
    text_version: str | None = Field(default=None, min_length=1, max_length=40)
    language: str | None = Field(default=None, min_length=2, max_length=16)
    channel: Literal["kiosk", "phone", "associate", "web", "cli"]
    store_id: Id | None = None
    age_confirmed: StrictInt | None = Field(default=None, ge=0, le=150)
    witness: None = Field(
        default=None,
        description="refused: the witness is the signed-in user or device",
        json_schema_extra={"deprecated": True},
    )


class ConsentTextIn(Strict):
    """A new version of a consent text (the active one for its purpose and language is
    replaced; older versions stay, unchanged, for the consents that point at them)."""

    purpose: Purpose
    language: str = Field(min_length=2, max_length=16)
    body: str = Field(min_length=1, max_length=20_000)
    version: str | None = Field(default=None, min_length=1, max_length=40)


class EnrollmentOptionsIn(Strict):
    """Enrollment options at a scope (the chain `*` or a store); null clears an override."""

    language: str | None = Field(default=None, min_length=2, max_length=16)
    ask_phone: StrictBool | None = None
    ask_tier: StrictBool | None = None
    min_age: StrictInt | None = Field(default=None, ge=0, le=21)
    kiosk_idle_seconds: StrictInt | None = Field(default=None, ge=2, le=3600)


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


# -- responses ---------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat()


# the JSON form the API has always used (`isoformat()`: "+00:00", not pydantic's "Z")
Timestamp = Annotated[datetime, PlainSerializer(_iso, return_type=str, when_used="json")]
PreferenceOut = str | int | float | bool | list[str | int | float | bool] | None


class Out(BaseModel):
    """A response built from the attributes of an ORM row or a dataclass."""

    model_config = ConfigDict(from_attributes=True)


class CustomerOut(Out):
    """A customer's profile, as created, updated or exported."""

    id: str
    name: str
    preferred_name: str | None
    email: str | None
    phone: str | None
    loyalty_id: str | None
    tier: Tier
    preferences: dict[str, PreferenceOut]
    notes: str
    preferred_advisor_id: str | None
    show_photo: bool
    created_at: Timestamp | None
    updated_at: Timestamp | None


class ConsentTextOut(Out):
    id: int
    purpose: str
    version: str
    language: str
    body: str
    created_by: str
    created_at: Timestamp
    active: bool


class ConsentOut(Out):
    purpose: Purpose
    text_id: int
    text_version: str
    channel: str
    store_id: str | None
    witness: str | None
    given_at: Timestamp | None
    withdrawn_at: Timestamp | None
    withdrawn_by: str | None
    withdrawn_store_id: str | None
    withdrawn_channel: str | None
    age_confirmed: int | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


class ConsentEvidenceOut(ConsentOut):
    """A consent with the exact text the customer was shown (the export)."""

    text: ConsentTextOut


class EnrollmentOptionsOut(Out):
    """The enrollment options in force at a scope (the chain's merged with the store's)."""

    language: str
    ask_phone: bool
    ask_tier: bool
    min_age: int
    kiosk_idle_seconds: int


class VisitOut(Out):
    id: int
    customer_id: str
    store_id: str
    at: Timestamp
    source: str
    similarity: float | None
    camera: str | None = None
    disputed: bool = False  # "not this person": not in the customer's history


class ItemOut(Out):
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class PurchaseOut(Out):
    id: int
    customer_id: str
    store_id: str
    at: Timestamp
    currency: str
    total_cents: int
    items: list[ItemOut]
    paid_by: str | None = None  # "face": paid at a till by face (issue 14)


class InterestOut(Out):
    id: int
    customer_id: str
    store_id: str
    product: str
    sku: str | None
    out_of_stock: bool
    resolved: bool
    created_at: Timestamp
    resolved_at: Timestamp | None


class FeedbackOut(Out):
    id: int
    customer_id: str
    store_id: str
    at: Timestamp
    rating: int | None
    text: str
    resolved: bool
    resolved_at: Timestamp | None


class CardOut(CustomerOut):
    """The staff card: the profile plus activity in the principal's stores only."""

    consents: list[ConsentOut]
    templates: int
    has_photo: bool
    recent_visits: list[VisitOut]
    purchases: list[PurchaseOut]
    open_interests: list[InterestOut]
    open_feedback: list[FeedbackOut]


NEVER_EXPORTED = "held for recognition; never exported"


class TemplateMetaOut(Out):
    """A face template by its metadata: the vector itself never leaves the server."""

    id: int
    model_id: str
    source: str
    quality: dict[str, float]
    created_at: Timestamp | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def vector(self) -> Literal["held for recognition; never exported"]:
        return "held for recognition; never exported"


class ExportOut(Out):
    """Everything held about a customer (data-subject access)."""

    customer: CustomerOut
    consents: list[ConsentEvidenceOut]
    face_templates: list[TemplateMetaOut]
    enrollment_photo_kept: bool
    visits: list[VisitOut]
    purchases: list[PurchaseOut]
    interests: list[InterestOut]
    feedback: list[FeedbackOut]
    payment: PaymentExportOut | None = None  # face payment set-up (no token, no digits)
    face_payments: list[FacePaymentOut] = []


class FaceAddedOut(BaseModel):
    template_id: int
    model_id: str
    quality: dict[str, float]


class BoxOut(BaseModel):
    x: int
    y: int
    width: int
    height: int


class IdentifiedCustomerOut(BaseModel):
    id: str
    name: str
    preferred_name: str | None
    tier: Tier
    similarity: float


class IdentifiedFaceOut(BaseModel):
    """One face of the photo: an opted-in customer, or "unknown" (nothing else about it).

    `reason` says why a face is unknown: `no_match` (nobody passed both models of the
    cascade) or `ambiguous` (two customers, e.g. relatives or look-alikes, were too close
    to tell apart, so neither is named); null for a named customer.
    """

    box: BoxOut
    customer: IdentifiedCustomerOut | Literal["unknown"]
    reason: Literal["no_match", "ambiguous"] | None = None


class IdentifyOut(BaseModel):
    """`threshold`: the first model's similarity every named face reaches (with the
    cascade a name also needs the second model's agreement and a clear margin)."""

    faces: list[IdentifiedFaceOut]
    threshold: float


class RowErrorOut(Out):
    row: int
    column: str | None
    message: str


class ImportReportOut(Out):
    rows: int
    created: int
    updated: int
    failed: int
    dry_run: bool
    atomic: bool
    applied: bool
    errors: list[RowErrorOut]


class AlertOut(Out):
    id: int
    store_id: str
    customer_id: str | None  # None: not about a customer (kind camera_silent, ...)
    customer_name: str | None
    rule: str
    message: str
    assignee_id: str | None
    created_at: Timestamp
    claimed_by: str | None
    claimed_at: Timestamp | None
    acknowledged_at: Timestamp | None
    kind: str = "arrival"
    reasons: list[str] = []  # why, in plain words
    camera: str | None = None
    seen_at: Timestamp | None = None
    local_time: str | None = None  # in the store's time zone, ISO 8601 with its offset
    time_zone: str = "UTC"
    has_photo: bool = False  # GET /customers/{id}/photo shows it (the customer agreed)
    outcome: Literal["greeted", "dismissed", "disputed", "resolved"] | None = None
    closed_at: Timestamp | None = None
    closed_by: str | None = None


class AcknowledgedOut(AlertOut):
    time_to_greet_s: float


class ShiftOut(Out):
    id: int
    store_id: str
    started_at: Timestamp


class StoreConfigOut(Out):
    """The store's rule overrides (only what was set) and webhook URL (never its secret)."""

    store_id: str
    rules: RuleSettings
    webhook_url: str | None
    time_zone: str = "UTC"


class DisputeOut(Out):
    """A disputed match ("not this person"): template-free facts (see crm.disputes)."""

    id: int
    store_id: str
    customer_id: str
    source: Literal["alert", "lookup"]
    camera: str | None
    matched_at: Timestamp
    disputed_at: Timestamp
    similarity: float | None
    threshold: float | None
    alert_id: int | None


class PosCardOut(Out):
    """What a till needs to attach a purchase: nothing more."""

    id: str
    name: str
    tier: Tier


class RuleOut(Out):
    name: str
    description: str
    value: dict[str, JsonValue]  # in force: the store's setting, else the default
    default: dict[str, JsonValue]
    overridden: bool


class ZoneOut(BaseModel):
    name: str  # entrance, floor or checkout_queue:<n>
    points: list[list[float]]  # [x, y] in 0..1 of the camera's picture


class ZoneIn(Strict):
    """One zone; the rules (name pattern, 3..64 points in 0..1, no self-crossing) are
    `alerts.zones`'; the bounds here only cap what a body may hold."""

    name: str = Field(max_length=40)
    points: list[Annotated[list[float], Field(max_length=4)]] = Field(max_length=256)


class ZonesIn(Strict):
    camera: str = Field(min_length=1, max_length=100)  # the agent's masked camera name
    zones: list[ZoneIn] = Field(max_length=64)


class AnalyticsIn(Strict):
    demographics_enabled: bool
    sentiment_enabled: bool


class EffectiveConfigOut(Out):
    """Every rule in force in the store with its value, default and description, and
    the webhook URL (never its secret); `problems`: stored settings not applied."""

    store_id: str
    rules: list[RuleOut]
    webhook_url: str | None
    webhook_secret_set: bool
    problems: list[str]
    zones: dict[str, list[ZoneOut]] = {}  # camera (masked name) -> its zones
    demographics_enabled: bool = False
    sentiment_enabled: bool = False


class WebhookIn(Strict):
    url: str = Field(max_length=500)  # empty: remove the webhook


class WebhookSecretOut(BaseModel):
    """The webhook's new signing secret: shown in this response only."""

    webhook_url: str | None
    secret: str | None


class WebhookTestOut(BaseModel):
    event_id: str


class WebhookDeliveryOut(Out):
    id: int
    event_id: str
    attempt: int
    status_code: int | None
    ok: bool
    error: str
    at: Timestamp


class GalleryTemplateOut(BaseModel):
    id: int
    customer_id: str
    vector: str  # base64 of the float32 template


class GallerySecondOut(BaseModel):
    """The cascade's second-model templates (a customer without any is decided by the
    first model alone at `threshold`)."""

    model_id: str
    templates: list[GalleryTemplateOut]


class GalleryOut(BaseModel):
    """What a store agent decides with. `threshold` is the first model's single-model
    threshold; `cascade` (the calibration's cascade section) and `second` are absent
    when the server runs a single model — agents from before the cascade ignore them."""

    model_id: str
    threshold: float
    generation: int
    templates: list[GalleryTemplateOut]
    cascade: dict[str, Any] | None = None
    second: GallerySecondOut | None = None
    target_fmr: float | None = None  # the false-match rate the cascade's threshold is set for


class AuditEventOut(Out):
    id: int
    at: Timestamp | str  # text when the stored value is unreadable (tampering)
    actor: str
    store_id: str | None
    action: str
    customer_id: str | None
    # what the action recorded (an object); text, or another JSON value, when tampered with
    detail: JsonValue
    note: str
    prev_hash: str | None
    hash: str | None


class AuditReportOut(Out):
    ok: bool
    checked: int
    problems: list[str]


class ValidationErrorOut(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem; `reason` is a stable machine-readable code where given."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    reason: str | None = None
    errors: list[ValidationErrorOut] | None = None


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` inlined (an OpenAPI response holds no `$defs`)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


_PROBLEM = {
    "content": {"application/problem+json": {"schema": _inline(Problem.model_json_schema())}}
}
# every refusal a route may answer with, declared once for every router
PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, **_PROBLEM}
    for status, description in {
        400: "malformed request",
        401: "no, invalid or expired credentials",
        403: "the role or store may not do this",
        404: "unknown id",
        409: "conflicts with existing data",
        413: "the request is too large",
        415: "unsupported media type",
        422: "invalid input, with `reason` (and `errors` for malformed fields)",
        429: "too many attempts (Retry-After)",
        503: "busy (Retry-After)",
    }.items()
}


class CsvResponse(Response):
    """A CSV document (so the schema says text/csv, not JSON)."""

    media_type = "text/csv"


class JpegResponse(Response):
    media_type = "image/jpeg"


class EventStreamResponse(StreamingResponse):
    """Server-sent events."""

    media_type = "text/event-stream"


class CameraOut(Out):
    """A store agent's camera: its masked name, last frame time, and open silence alert."""

    device_id: str
    camera: str
    store_id: str
    reported_at: Timestamp
    last_frame_at: Timestamp | None
    silent: bool
    silent_since: Timestamp | None


class ReadinessItemOut(BaseModel):
    """One set-up item of a store (`crm.readiness`): what is in force, what was confirmed."""

    model_config = ConfigDict(from_attributes=True)

    item: Literal["signage", "consent_text", "retention"]
    label: str
    expected: str
    confirmed: bool
    confirmed_value: str | None
    confirmed_by: str | None
    confirmed_at: datetime | None


class ReadinessOut(BaseModel):
    """Whether a store is ready for recognition; `enforced`: recognition is off until it is."""

    model_config = ConfigDict(from_attributes=True)

    store_id: str
    ready: bool
    enforced: bool
    items: list[ReadinessItemOut]


class SyncModelOut(BaseModel):
    """Templates of one model in a sync page: `vectors` is base64 of `len(ids)` float16
    little-endian rows of `dim` values, in the order of `ids` and `customers`."""

    dim: int
    ids: list[int]
    customers: list[str]
    vectors: str


class SyncPageOut(BaseModel):
    """One page of an agent's gallery sync (`crm.sync`, docs/agent-sync.md).

    Apply `removed` (customer ids) first, then `models`; ask again at once while `more`.
    `reset`: the first page of a full sync (start from an empty gallery; `rule` holds the
    decision rule then). `mode`: how much of the gallery this store's agent holds."""

    mode: Literal["full", "store", "server"]
    cursor: str
    more: bool
    reset: bool
    rule: dict[str, Any] | None
    removed: list[str]
    models: dict[str, SyncModelOut]


class DecideOut(BaseModel):
    """The server's decision about one track: known (with the customer) or not."""

    known: bool
    customer_id: str | None = None
    similarity: float | None = None


class AnalyticsPointOut(BaseModel):
    """One value of an analytics series (`crm.dashboard.Point`): counters about no one."""

    period: datetime  # UTC start of the hour or day
    zone: str  # a zone, or the alert kind for `alerts` / `time_to_*` rows
    metric: str
    bucket: str
    value: float


class AnalyticsOut(BaseModel):
    """A dashboard series over [since, until) for one store or the caller's whole scope."""

    store_id: str | None
    since: datetime
    until: datetime
    bucket: Literal["hour", "day"]
    points: list[AnalyticsPointOut]


# -- face payment (crm.payments) -------------------------------------------------------------

# amounts and limits: whole minor units; the crm layer checks the range (reason `bad_amount`)
MinorUnits = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
CurrencyCode = Annotated[str, Field(min_length=1, max_length=8)]  # crm: ISO 4217 it accepts


class PaymentSetupIn(Strict):
    """Set a customer up for face payment. `token`: the wallet provider's opaque reference
    (never a card number: refused with `card_number_refused`). `customer_present`: staff
    confirm the customer is at the counter (required of staff)."""

    token: str = Field(min_length=1, max_length=400)
    provider: str = Field(min_length=1, max_length=40)
    phone_last4: str = Field(min_length=1, max_length=8)
    currency: CurrencyCode
    limit_per_transaction: MinorUnits
    limit_per_day: MinorUnits
    customer_present: StrictBool = False


class PaymentUpdateIn(Strict):
    """Change the fields sent; the others stay."""

    token: str | None = Field(default=None, min_length=1, max_length=400)
    provider: str | None = Field(default=None, min_length=1, max_length=40)
    phone_last4: str | None = Field(default=None, min_length=1, max_length=8)
    currency: CurrencyCode | None = None
    limit_per_transaction: MinorUnits | None = None
    limit_per_day: MinorUnits | None = None
    customer_present: StrictBool = False


class PaymentProfileOut(Out):
    """A customer's payment set-up: never the token in full, never the digits."""

    customer_id: str
    provider: str
    token_hint: str  # the token's last 4 characters, to tell two wallets apart
    currency: str
    limit_per_transaction: int
    limit_per_day: int
    payable: bool  # both consents active and set up: a till may take their face now
    created_at: Timestamp
    updated_at: Timestamp


class PaySessionIn(Strict):
    """A till's payment: `amount` in `currency`'s minor units (1250 EUR cents = 12.50)."""

    amount: MinorUnits
    currency: CurrencyCode
    till: str = Field(min_length=1, max_length=40)


class PaySessionBase(Out):
    """What every view of a payment session shows."""

    id: str
    store_id: str
    till: str
    amount: int
    currency: str
    state: str
    decline_reason: str | None
    created_at: Timestamp


class PaySessionOut(PaySessionBase):
    """A payment session: `looking` until a decision; `declined` with a reason."""

    expires_at: Timestamp
    smile_after_ms: int | None = None  # in `challenge`: when the till shows "smile now"
    step_up_attempts_left: int | None = None  # in `step_up`
    authorisation: AuthorisationOut | None = None  # in `authorised`
    confirmed: bool = False  # the POS confirmed the charge (the Purchase is recorded)


class AuthorisationPayloadOut(BaseModel):
    session_id: str
    customer_ref: str
    payment_token: str
    provider: str
    amount: int
    currency: str
    store_id: str
    till: str
    expires_at: str


class AuthorisationOut(BaseModel):
    """What the POS charges with: `signature` is base64 Ed25519 over the canonical JSON
    of `payload` (sorted keys, no spaces, UTF-8); verify with /pay/authorisation-key."""

    payload: AuthorisationPayloadOut
    signature: str


class AuthorisationKeyOut(BaseModel):
    algorithm: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key


class StepUpIn(Strict):
    digits: str = Field(max_length=10)


class ConfirmItemIn(Strict):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    quantity: int = Field(gt=0, le=10_000)
    unit_price: int = Field(ge=0, le=100_000_000)


class ConfirmIn(Strict):
    provider_reference: str = Field(min_length=1, max_length=200)
    items: list[ConfirmItemIn] = Field(min_length=1, max_length=100)


class PaymentExportOut(Out):
    """A customer's face payment set-up in their export: the token only by its hint."""

    provider: str
    token_hint: str
    currency: str
    limit_per_transaction: int
    limit_per_day: int
    failed_step_ups: int
    locked_until: Timestamp | None
    created_at: Timestamp


class FacePaymentOut(PaySessionBase):
    """One face payment session of a customer (staff API and export)."""

    authorised_at: Timestamp | None
    confirmed_at: Timestamp | None
    purchase_id: int | None
