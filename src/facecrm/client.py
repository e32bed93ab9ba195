"""A typed client of the REST API for integrators (sync, over httpx).

Staff log in with a user name and password; store devices (agents, tills) use their
device key. Every answer is a pydantic model mirroring the server's response (see
`facecrm.api.schemas`); every refusal is one `ClientError` with the problem+json
body's `status`, stable `reason` and `detail`.

    from facecrm.client import Client, ClientError

    with Client.login("https://crm.example", "ada", "correct horse battery") as crm:
        ada = crm.create_customer("Ada Lovelace", tier="gold")
        crm.give_consent(ada.id, text_version="2026-11-v1", channel="kiosk")
        crm.add_face(ada.id, "ada.jpg")
        for face in crm.identify("frame.jpg").faces:
            print(face.box, face.customer.name if face.customer else "unknown")

The module needs only httpx and pydantic (not the server, the models or a database),
so it can be vendored into an integration as it is.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, field_validator

from facecrm.config import API_PREFIX

if TYPE_CHECKING:
    import numpy as np


Purpose = Literal["in_store_recognition", "face_payment", "experience_analytics", "marketing"]
Channel = Literal["kiosk", "phone", "associate", "web", "cli"]
PhotoLike: TypeAlias = "str | Path | bytes | bytearray | np.ndarray"
M = TypeVar("M", bound=BaseModel)

__all__ = [
    "Alert",
    "Card",
    "Client",
    "ClientError",
    "Consent",
    "CustomerSummary",
    "Export",
    "FaceAdded",
    "Feedback",
    "Identification",
    "IdentifiedFace",
    "Interest",
    "Me",
    "Profile",
    "Purchase",
    "PurchaseItem",
    "TemplateMeta",
    "Token",
    "Verification",
    "Visit",
]


class ClientError(Exception):
    """The server refused the request (or could not be reached: `status` 0).

    `reason` is the server's stable machine-readable code (`not_found`,
    `consent_required`, `already_enrolled`, `face_mismatch`, ...) when it gave one;
    `body` is the whole problem+json document.
    """

    def __init__(
        self, status: int, reason: str | None, detail: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}" if reason else f"{status}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.body = body or {}


class _Out(BaseModel):
    """A response: extra members a newer server adds are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Token(_Out):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Me(_Out):
    kind: str
    id: str
    name: str
    role: str
    stores: list[str] | None


class CustomerSummary(_Out):
    """A search result (`GET /customers`)."""

    id: str
    name: str
    preferred_name: str | None
    tier: str
    loyalty_id: str | None


class Profile(_Out):
    """A customer's profile, as created or updated."""

    id: str
    name: str
    preferred_name: str | None = None
    email: str | None = None
    phone: str | None = None
    loyalty_id: str | None = None
    tier: str = "standard"
    preferences: dict[str, Any] = {}
    notes: str = ""
    preferred_advisor_id: str | None = None
    show_photo: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Consent(_Out):
    """A consent: the text it was given on (id and version), where, through which channel
    and witnessed by whom (the server's principal), and its withdrawal's who/where/how."""

    purpose: str
    text_id: int
    text_version: str
    channel: str
    store_id: str | None = None
    witness: str | None = None
    given_at: datetime | None = None
    withdrawn_at: datetime | None = None
    withdrawn_by: str | None = None
    withdrawn_store_id: str | None = None
    withdrawn_channel: str | None = None
    age_confirmed: int | None = None
    active: bool


class ConsentText(_Out):
    """A version of a consent text in one language (never changed once published)."""

    id: int
    purpose: str
    version: str
    language: str
    body: str
    created_by: str
    created_at: datetime
    active: bool


class ConsentEvidence(Consent):
    """A consent with the exact text shown (in the export)."""

    text: ConsentText


class Visit(_Out):
    id: int
    customer_id: str
    store_id: str
    at: datetime
    source: str
    similarity: float | None = None
    camera: str | None = None
    disputed: bool = False


class PurchaseItem(_Out):
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class Purchase(_Out):
    id: int
    customer_id: str
    store_id: str
    at: datetime
    currency: str
    total_cents: int
    items: list[PurchaseItem] = []
    paid_by: str | None = None  # "face": paid at a till by face


class Interest(_Out):
    id: int
    customer_id: str
    store_id: str
    product: str
    sku: str | None = None
    out_of_stock: bool = False
    resolved: bool = False
    created_at: datetime | None = None
    resolved_at: datetime | None = None


class Feedback(_Out):
    id: int
    customer_id: str
    store_id: str
    at: datetime
    rating: int | None = None
    text: str = ""
    resolved: bool = False
    resolved_at: datetime | None = None


class Card(Profile):
    """The staff card (`GET /customers/{id}`, an audited lookup); activity is in the
    principal's stores only."""

    consents: list[Consent] = []
    templates: int = 0
    has_photo: bool = False
    recent_visits: list[Visit] = []
    purchases: list[Purchase] = []
    open_interests: list[Interest] = []
    open_feedback: list[Feedback] = []


class TemplateMeta(_Out):
    """A face template by its metadata (`vector` only says it is never exported)."""

    id: int
    model_id: str
    source: str
    quality: dict[str, float] = {}
    created_at: datetime | None = None
    vector: str


class Export(_Out):
    """Everything held about a customer (data-subject access); templates by metadata only."""

    customer: Profile
    consents: list[ConsentEvidence] = []
    face_templates: list[TemplateMeta] = []
    enrollment_photo_kept: bool = False
    visits: list[Visit] = []
    purchases: list[Purchase] = []
    interests: list[Interest] = []
    feedback: list[Feedback] = []
    payment: PaymentSummary | None = None
    face_payments: list[FacePayment] = []


class PaymentSummary(_Out):
    """A face payment set-up in an export: the wallet token by its last 4 characters."""

    provider: str
    token_hint: str
    currency: str
    limit_per_transaction: int
    limit_per_day: int
    failed_step_ups: int = 0
    locked_until: datetime | None = None
    created_at: datetime


class FacePayment(_Out):
    """One face payment session of the customer."""

    id: str
    store_id: str
    till: str
    amount: int
    currency: str
    state: str
    decline_reason: str | None = None
    created_at: datetime
    authorised_at: datetime | None = None
    confirmed_at: datetime | None = None
    purchase_id: int | None = None


class FaceAdded(_Out):
    template_id: int
    model_id: str
    quality: dict[str, float]


class Box(_Out):
    x: int
    y: int
    width: int
    height: int


class IdentifiedCustomer(_Out):
    id: str
    name: str
    preferred_name: str | None = None
    tier: str
    similarity: float


class IdentifiedFace(_Out):
    """One face of the photo: `customer` is None for an unknown face, and `reason` says
    why: `no_match`, or `ambiguous` (two customers too close to tell apart)."""

    box: Box
    customer: IdentifiedCustomer | None
    reason: Literal["no_match", "ambiguous"] | None = None

    @field_validator("customer", mode="before")
    @classmethod
    def _unknown(cls, value: object) -> object:
        return None if value == "unknown" else value


class Identification(_Out):
    faces: list[IdentifiedFace]
    threshold: float


class Verification(_Out):
    customer_id: str
    match: bool
    similarity: float | None
    threshold: float


class Alert(_Out):
    id: int
    store_id: str
    customer_id: str | None = None  # None: not about a customer (a silent camera)
    customer_name: str | None = None
    rule: str
    message: str
    assignee_id: str | None = None
    created_at: datetime
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    acknowledged_at: datetime | None = None
    kind: str = "arrival"
    reasons: list[str] = []
    camera: str | None = None
    seen_at: datetime | None = None
    local_time: str | None = None
    time_zone: str = "UTC"
    has_photo: bool = False
    outcome: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None


class Client:
    """The REST API of one facecrm server, as one staff member (`token`) or device (`api_key`)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if token is not None and api_key is not None:
            raise ValueError("give a staff token or a device api_key, not both")
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if api_key is not None:
            headers["X-API-Key"] = api_key
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url + API_PREFIX, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def login(cls, url: str, username: str, password: str, **options: Any) -> Client:
        """Log in as a staff member; the client carries the token (one shift long)."""
        with cls(url, **options) as anonymous:
            token = anonymous._model(
                Token,
                "POST",
                "/auth/token",
                data={"username": username, "password": password},
            )
        return cls(url, token=token.access_token, **options)

    def logout(self) -> None:
        """Revoke this client's staff token on the server."""
        self._call("POST", "/auth/logout")

    def me(self) -> Me:
        return self._model(Me, "GET", "/me")

    # -- customers ---------------------------------------------------------------------

    def create_customer(self, name: str, **fields: Any) -> Profile:
        """A new customer (no face, no consent yet); `fields` as in `update_customer`."""
        return self._model(Profile, "POST", "/customers", json={"name": name, **fields})

    def get_customer(self, customer_id: str) -> Card:
        return self._model(Card, "GET", f"/customers/{customer_id}")

    def search_customers(
        self, query: str = "", limit: int = 50, offset: int = 0
    ) -> list[CustomerSummary]:
        params = {"q": query, "limit": limit, "offset": offset}
        return self._models(CustomerSummary, "GET", "/customers", params=params)

    def update_customer(self, customer_id: str, **fields: Any) -> Profile:
        """Change the given fields only: name, preferred_name, email, phone, loyalty_id, tier,
        preferences, notes, preferred_advisor_id, show_photo."""
        return self._model(Profile, "PATCH", f"/customers/{customer_id}", json=fields)

    def erase_customer(self, customer_id: str) -> None:
        """Erase everything about the customer (a right-to-erasure request)."""
        self._call("DELETE", f"/customers/{customer_id}")

    delete_customer = erase_customer

    def export_customer(self, customer_id: str) -> Export:
        return self._model(Export, "GET", f"/customers/{customer_id}/export")

    # -- consents and faces --------------------------------------------------------------

    def give_consent(
        self,
        customer_id: str,
        *,
        channel: Channel,
        text_id: int | None = None,
        text_version: str | None = None,
        purpose: Purpose = "in_store_recognition",
        language: str | None = None,
        store_id: str | None = None,
        age_confirmed: int | None = None,
    ) -> Consent:
        """Record that the customer agreed to the consent text shown: `text_id` (or an older
        client's `text_version`; neither: the current text in `language`). The server
        records its own witness (this client's log-in or key) and store; `store_id` only
        picks one of this log-in's stores."""
        body: dict[str, object] = {"purpose": purpose, "channel": channel}
        optional = {
            "text_id": text_id,
            "text_version": text_version,
            "language": language,
            "store_id": store_id,
            "age_confirmed": age_confirmed,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._model(Consent, "POST", f"/customers/{customer_id}/consents", json=body)

    def withdraw_consent(
        self,
        customer_id: str,
        purpose: Purpose = "in_store_recognition",
        *,
        channel: str = "api",
        store_id: str | None = None,
    ) -> None:
        """Withdraw a consent; for recognition the server deletes the templates at once.
        The withdrawal records this client's principal, its store and `channel`."""
        params = {"channel": channel, **({"store_id": store_id} if store_id else {})}
        self._call("DELETE", f"/customers/{customer_id}/consents/{purpose}", params=params)

    def add_face(
        self,
        customer_id: str,
        photo: PhotoLike,
        *,
        keep_photo: bool = False,
        override_reason: str | None = None,
    ) -> FaceAdded:
        """Enroll a photo of a consenting customer (a manager may override a mismatch)."""
        form = {"keep_photo": str(keep_photo).lower()}
        if override_reason is not None:
            form |= {"override": "true", "reason": override_reason}
        return self._model(
            FaceAdded,
            "POST",
            f"/customers/{customer_id}/faces",
            data=form,
            files={"image": _upload(photo)},
        )

    # -- recognition ---------------------------------------------------------------------

    def identify(self, photo: PhotoLike, store_id: str | None = None) -> Identification:
        """Every face in the photo: an opted-in customer with similarity, or unknown."""
        form = {} if store_id is None else {"store_id": store_id}
        return self._model(
            Identification, "POST", "/identify", data=form, files={"image": _upload(photo)}
        )

    def verify(self, customer_id: str, photo: PhotoLike) -> Verification:
        """Is the photo this customer? (1:1)"""
        return self._model(
            Verification,
            "POST",
            "/verify",
            data={"customer_id": customer_id},
            files={"image": _upload(photo)},
        )

    # -- visits and alerts ---------------------------------------------------------------

    def record_visit(
        self,
        customer_id: str,
        store_id: str,
        *,
        at: datetime | None = None,
        source: Literal["agent", "identify", "manual"] = "manual",
        similarity: float | None = None,
    ) -> Visit:
        """A visit (at: with a time zone; default now)."""
        body = {
            "customer_id": customer_id,
            "store_id": store_id,
            "at": None if at is None else at.isoformat(),
            "source": source,
            "similarity": similarity,
        }
        return self._model(Visit, "POST", "/visits", json=body)

    def visits(
        self,
        *,
        store_id: str | None = None,
        customer_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Visit]:
        params = {
            "store_id": store_id,
            "customer_id": customer_id,
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "limit": limit,
            "offset": offset,
        }
        present = {k: v for k, v in params.items() if v is not None}
        return self._models(Visit, "GET", "/visits", params=present)

    def alerts(self) -> list[Alert]:
        """Open alerts of the staff member's stores, newest first."""
        return self._models(Alert, "GET", "/alerts")

    def claim_alert(self, alert_id: int) -> Alert:
        return self._model(Alert, "POST", f"/alerts/{alert_id}/claim")

    def ack_alert(self, alert_id: int) -> Alert:
        return self._model(Alert, "POST", f"/alerts/{alert_id}/ack")

    def dismiss_alert(self, alert_id: int) -> Alert:
        return self._model(Alert, "POST", f"/alerts/{alert_id}/dismiss")

    def dispute_alert(self, alert_id: int) -> Alert:
        """ "Not this person": closes the alert and takes the visit out of the history."""
        return self._model(Alert, "POST", f"/alerts/{alert_id}/dispute")

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, or a `ClientError` from its problem+json body."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {exc}") from exc
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"detail": response.text[:500] or response.reason_phrase}
        detail = body.get("detail")
        raise ClientError(
            response.status_code,
            body.get("reason") if isinstance(body.get("reason"), str) else None,
            detail if isinstance(detail, str) else str(detail),
            body,
        )

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._call(method, path, **kwargs).json())

    def _models(self, model: type[M], method: str, path: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(  # type: ignore[valid-type]
            self._call(method, path, **kwargs).json()
        )


def _upload(photo: PhotoLike) -> tuple[str, bytes, str]:
    """A multipart file from a path, encoded bytes or an RGB uint8 array (sent as PNG)."""
    if isinstance(photo, str | Path):
        path = Path(photo)
        return (path.name, path.read_bytes(), "application/octet-stream")
    if isinstance(photo, bytes | bytearray | memoryview):
        return ("photo", bytes(photo), "application/octet-stream")
    from PIL import Image as PILImage

    if photo.dtype.name != "uint8" or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(
            f"an array photo must be RGB uint8 (h, w, 3), not {photo.dtype} {photo.shape}"
        )
    buffer = io.BytesIO()
    PILImage.fromarray(photo).save(buffer, "PNG")  # lossless: the server sees these pixels
    return ("photo.png", buffer.getvalue(), "image/png")
