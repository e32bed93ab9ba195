"""All settings in one place, read from `FACECRM_*` environment variables.

Every knob of the product lives here so that the CLI, the services and the tests
agree on one value. `get_settings()` builds them once; the CLI's `--data-dir` flag
and the tests call `configure()` to replace them.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Final, Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from facecrm.errors import ConfigError

EmbedderName = Literal["dlib", "dlib-native", "sface", "onnx"]
# Not a setting: the store agent and `facecrm.client` must agree with every server.
API_PREFIX: Final = "/api/v1"


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("facecrm", appauthor=False))


class Settings(BaseSettings):
    """facecrm settings; each field can be set as `FACECRM_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FACECRM_", extra="ignore")
    # numbers are bounded here: a zero upload limit or a negative port is refused at load,
    # naming the variable, instead of failing somewhere deep later

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: sqlite in data_dir

    # Vision
    embedder: EmbedderName = "dlib"
    onnx_model: Path | None = None  # user-supplied ArcFace-style ONNX embedder
    onnx_input_size: int = Field(112, gt=0)
    onnx_mean: float = 127.5
    onnx_std: float = Field(127.5, gt=0)
    # large JPEGs are decoded at 1/2..1/8 scale down to this
    decode_max_side: int = Field(1024, gt=0)
    detect_max_side: int = Field(640, gt=0)  # larger images are downscaled for detection only
    detect_score: float = Field(0.6, ge=0, le=1)
    threads: int = Field(1, gt=0)  # per process; parallelism comes from processes

    # Quality gate for enrollment photos
    min_face_px: int = Field(60, gt=0)  # inter-ocular distance x ~2.5 is about the face width
    min_blur: float = Field(25.0, ge=0)  # variance of the Laplacian on the aligned chip
    max_yaw: float = Field(0.45, ge=0)  # nose offset from the eye midpoint, in eye distances
    max_roll_deg: float = Field(35.0, ge=0)
    min_detector_score: float = Field(0.8, ge=0, le=1)

    # Open-set identification
    # false-match rate per comparison the threshold is set for
    target_fmr: float = Field(1e-3, gt=0, lt=1)
    # a calibration JSON written by `facecrm eval DIR --calibrate` (default: data_dir/calibration)
    calibration: Path | None = None
    # galleries at least this large use the approximate index
    ann_min_size: int = Field(20_000, gt=0)
    # PostgreSQL: pgvector's HNSW graph, set when the index is created (a new model's, or
    # after `DROP INDEX gallery_hnsw_...`: docs/deploy.md). At 1M templates, exact
    # search's customer came first for 94.7% of returning customers with m 16 /
    # ef_construction 64, 98.5% with 24 / 128, 99.6% with 32 / 200 (benchmarks/README.md)
    pgvector_hnsw_m: int = Field(32, ge=2, le=100)
    pgvector_hnsw_ef_construction: int = Field(200, ge=4, le=1000)
    # candidates pgvector visits per search: the largest cost of an identify on PostgreSQL
    # (its own CPU, beside ours). Unset: by the gallery's size, at values whose agreement
    # with exact search was measured (`crm.gallery_store.ef_search_for`: 200 up to 300k
    # templates, 1,000 beyond); set, it is fixed
    pgvector_hnsw_ef_search: int | None = Field(None, ge=10, le=1000)

    # Encryption at rest (see facecrm.crypto)
    master_key: str | None = None  # "key_id:base64(32 bytes)", comma-separated, last wraps
    master_key_file: Path | None = None  # default: data_dir/master.keys

    # Server and staff authentication
    secret_key: str | None = None  # signs staff tokens; default: a random key kept in data_dir
    token_minutes: int = Field(8 * 60, gt=0)  # a staff token lasts one shift
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # proxies whose X-Forwarded-For/-Proto are believed (comma-separated IPs, "*" for any);
    # none by default: a forged header would otherwise dodge the per-address log-in limit
    forwarded_allow_ips: str | None = None

    # Log-in throttling (crm.throttle.LoginGuard; the README and the threat model quote these)
    login_address_failures: int = Field(10, gt=0)  # per address and window, then refused
    login_free_failures: int = Field(5, ge=0)  # an account's failures before its back-off
    login_backoff_seconds: float = Field(5.0, gt=0)  # first refusal window, then doubling
    login_backoff_cap_seconds: float = Field(900.0, gt=0)  # the longest refusal window
    login_window_seconds: float = Field(900.0, gt=0)  # failures older than this are forgotten
    # an address the account logged in from this recently skips the account's back-off
    login_known_address_days: float = Field(30.0, ge=0)

    # Store visits and alerts
    # one visit per customer and store within this window
    visit_window_minutes: int = Field(120, gt=0)
    # identifications (phone look-up, identify, verify) per staff member and minute
    lookup_per_minute: int = Field(20, gt=0)
    # no second arrival alert for a customer in a store within this time of the last one
    # (a long stay becomes two visits; 0: every new visit may alert)
    alert_cooldown_minutes: int = Field(240, ge=0)
    # a POS device's exact look-ups by loyalty id per minute (crm.pos)
    pos_lookup_per_minute: int = Field(30, gt=0)
    # Store webhooks go to public https hosts only; an admin may allow known internal ones
    webhook_allow_hosts: list[str] = []  # host names or addresses exempt from the address check
    webhook_allow_http: bool = False
    # Store agents: a status line in the agent's log, and a heartbeat with each camera's
    # last frame time; the server looks for silent cameras this often (and on each heartbeat)
    agent_summary_seconds: float = Field(60.0, gt=0)
    agent_heartbeat_seconds: float = Field(30.0, gt=0)
    camera_check_seconds: float = Field(30.0, gt=0)
    # How much of the chain's gallery a store's agent holds (docs/agent-sync.md): `full`
    # every opted-in customer, `store` those enrolled in or seen at its store (then the
    # server decides the rest), `server` none (the server decides every track)
    agent_sync_mode: Literal["full", "store", "server"] = "full"
    agent_sync_store_modes: dict[str, Literal["full", "store", "server"]] = {}  # by store id
    sync_log_days: int = Field(30, gt=0)  # an agent offline longer than this syncs in full
    agent_decide_per_minute: int = Field(600, gt=0)  # server-side decisions per agent

    # Self-enrollment on the customer's own phone (crm.selfservice; README "Customers enroll
    # on their own phone"). The sender of one-time codes: "outbox" (the embedded one: a
    # table a test or a relay reads) or "package.module:Class" of a deployment's SMS/e-mail
    # sender (built with the settings; see `selfservice.OtpSender`)
    otp_sender: str = "outbox"
    # the chain's opt-in incentive: shown in the flow, recorded once on the customer
    self_incentive_text: str = Field("", max_length=200)
    self_incentive_points: int = Field(0, ge=0)
    self_codes_per_address_hour: int = Field(10, gt=0)  # codes asked from one address
    self_codes_per_destination_hour: int = Field(5, gt=0)  # codes sent to one email/phone
    self_requests_per_address_minute: int = Field(30, gt=0)  # photo checks, enrollments, sign-ins
    self_min_fill_seconds: float = Field(3.0, ge=0)  # a form sent sooner is a bot's
    self_session_minutes: int = Field(15, gt=0)  # a customer's personal page session

    # Face checkout (crm.payflow, docs/face-checkout.md). Operating point of the payment
    # match: a modelled joint false-match rate of the cascade, far stricter than recognition
    # (1e-5 -> g >= 3.15 impostor z with the shipped calibration; 1e-3 -> 2.80)
    pay_target_fmr: float = Field(1e-5, gt=0, lt=1)
    # step-up (the phone's last 4 digits) when the customer's lead over the next customer is
    # below this (impostor z units of the cascade's score g; the calibration's ambiguity
    # margin, ~0.37, already declines `ambiguous_match` below it) ...
    pay_step_up_margin_z: float = Field(1.0, ge=0)
    # ... when more customers than this are set up for face payment (1:N errors grow with N)
    pay_step_up_gallery: int = Field(10_000, ge=0)
    # ... or when the amount is above this, in the currency's minor units; per currency in
    # `pay_step_up_amounts` (JSON, e.g. {"JPY": 8000, "EUR": 5000}: 5000 minor units are
    # 50 euros but 5000 yen), this number for a currency not named there
    pay_step_up_amount: int = Field(5_000, ge=0)
    pay_step_up_amounts: dict[str, int] = Field(default_factory=dict)
    pay_step_up_attempts: int = Field(3, gt=0)  # wrong digits one session allows
    pay_lock_failures: int = Field(3, gt=0)  # wrong digits in a row (any session) that lock
    pay_lock_minutes: int = Field(15, gt=0)
    pay_authorisation_seconds: int = Field(300, gt=0)  # how long the POS may charge
    # a confirmation may arrive this long after the charge deadline (a retry lost on the
    # network); later, none is recorded, and the retention run drops the stored
    # authorisation (it names the wallet token)
    pay_confirm_grace_seconds: int = Field(600, ge=0)
    pay_retain_sessions_days: int = Field(90, ge=0)  # final payment sessions; 0: kept

    # Retention (facecrm purge, and hourly inside the server); 0 switches a rule off
    retain_visits_days: int = Field(365, ge=0)
    # templates of customers not seen for this long
    retain_templates_unseen_months: int = Field(24, ge=0)
    reconfirm_consent_months: int = Field(36, ge=0)  # consents expire unless given again
    purge_interval_minutes: int = Field(60, gt=0)
    # alerts (with who claimed them and the time to greet: staff data) older than this go
    retain_alerts_days: int = Field(90, ge=0)
    # audit events older than this are pruned, the chain anchored by a sealed checkpoint
    # (docs/privacy.md: long enough for a complaint or a yearly audit, no longer)
    retain_audit_days: int = Field(365, ge=0)
    # how long the operator keeps database backups; erasure-log entries older than this
    # are pruned (no backup can still hold the erased rows)
    backup_retention_days: int = Field(35, ge=0)
    # a copy of the erasure log kept OUTSIDE the database, read by `facecrm erasures replay`
    # after a restore (default: data_dir/erasure-log.jsonl; never restore it with a backup)
    erasure_log_file: Path | None = None
    # identification and agent galleries only in stores whose setup an admin confirmed
    require_store_readiness: bool = False

    # Bad input limits
    max_upload_bytes: int = Field(15 * 1024 * 1024, gt=0)
    # JPEG: decoded at 1/2..1/8 scale, so cheap per pixel
    max_image_pixels: int = Field(40_000_000, gt=0)
    # PNG, TIFF and BMP decode at full size before they can be reduced: up to 8 bytes a
    # pixel, so 16 MP (a 4900x3300 photo) peaks at ~130 MB; WebP costs 16 bytes a pixel
    # and gets half this limit (see vision/image.py and benchmarks/README.md)
    max_decoded_pixels: int = Field(16_000_000, gt=0)
    # libjpeg's own progressive scripts use 6 (grey) to 10 (colour) scans, mozjpeg a few
    # more; every scan is a pass over the whole image, so more than this is refused
    jpeg_max_scans: int = Field(32, gt=0)
    max_concurrent_decodes: int = Field(2, gt=0)  # decodes at once per process (one per core)
    # a request waits this long for a decode slot, then 503
    decode_wait_seconds: float = Field(5.0, ge=0)

    @field_validator("pay_step_up_amounts")
    @classmethod
    def _step_up_amounts(cls, value: dict[str, int]) -> dict[str, int]:
        """ISO 4217 codes (3 capitals) to amounts in minor units (0 or more)."""
        for currency, amount in value.items():
            if not re.fullmatch(r"[A-Z]{3}", currency) or amount < 0:
                raise ValueError(
                    "pay_step_up_amounts maps ISO 4217 codes (e.g. EUR) to minor units >= 0"
                )
        return value

    @field_validator("master_key")
    @classmethod
    def _master_key_format(cls, value: str | None) -> str | None:
        """`id:base64` of 32 bytes, comma-separated: refused at load, not at first use."""
        if value is None:
            return None
        for n, item in enumerate(value.split(","), 1):
            key_id, _, encoded = item.strip().partition(":")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raw = b""
            if not key_id or len(raw) != 32:
                # never quote the value: it is a secret
                raise ValueError(f"key {n} is not 'id:base64' of 32 bytes")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'facecrm.db'}"

    @property
    def cache_dir(self) -> Path:
        """Where derived, rebuildable files (converted models, index files) live."""
        return self.data_dir / "cache"

    @property
    def resolved_erasure_log_file(self) -> Path:
        """The erasure log's copy outside the database (see `crm.erasures`)."""
        return self.erasure_log_file or self.data_dir / "erasure-log.jsonl"


_settings: Settings | None = None


def load(**overrides: object) -> Settings:
    """Settings from the environment plus `overrides`; a bad value is a `ConfigError`.

    Its message names each bad variable and why, in one line, without the value
    (a value may be a secret such as the master key).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"FACECRM_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except SettingsError as exc:  # a list or dict setting that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"FACECRM_{field.group(1).upper()}" if field else "a FACECRM_ setting"
        raise ConfigError(
            f'invalid settings: {name}: not valid JSON (a list is written ["a", "b"])'
        ) from None


def get_settings() -> Settings:
    """The process-wide settings (from the environment unless `configure()` replaced them)."""
    global _settings
    if _settings is None:
        _settings = load()
    return _settings


def configure(**overrides: object) -> Settings:
    """Replace the process-wide settings with environment values plus `overrides`."""
    global _settings
    _settings = load(**overrides)
    return _settings
