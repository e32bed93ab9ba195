"""Signed webhooks: each store may forward its alerts to its own system.

The body is JSON; `X-Facecrm-Signature: sha256=<hex>` is the HMAC-SHA256 of
`<timestamp>.<body>` with the store's secret, `X-Facecrm-Timestamp` the Unix
time, so receivers can reject forgeries and replays. Delivery runs in a
background thread with retries and never blocks the request that raised the
alert.

The URL is chosen by a store manager but fetched by the server, so it must not
reach the server's own network (SSRF): `check_url` refuses non-https URLs,
credentials, control characters and non-public address literals when the
config is written; `vet` repeats that before each delivery, resolves the name
and refuses it unless every address is public; the request then goes to that
vetted address (with the original Host header and TLS server name) so a second,
different DNS answer cannot redirect it (DNS rebinding). Redirects are never
followed. `Settings.webhook_allow_hosts` / `webhook_allow_http` let an
administrator allow a known internal receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from facecrm.config import Settings
from facecrm.crm.errors import InvalidError

log = logging.getLogger("facecrm.webhooks")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class WebhookRefused(InvalidError):
    """A webhook URL the server will not call; `reason` is stable for API clients."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason)


@dataclass(frozen=True, slots=True)
class Policy:
    """What an administrator allows beyond public https receivers."""

    allow_hosts: frozenset[str] = frozenset()
    allow_http: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        hosts = frozenset(h.strip().lower().rstrip(".") for h in settings.webhook_allow_hosts)
        return cls(hosts, settings.webhook_allow_http)

    def allows(self, host: str) -> bool:
        return host in self.allow_hosts


Report = Callable[[int, int | None, str], None]
"""Told of each attempt: its number (from 1), the HTTP status (None: no answer), an error."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def is_public(ip: IP) -> bool:
    """Globally routable unicast, including any IPv4 address embedded in an IPv6 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _literal(host: str) -> IP | None:
    """The address a host spells, including legacy IPv4 forms (2130706433, 0x7f.1, 127.1)."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(url: str, policy: Policy) -> httpx.URL:
    """The parsed URL if the server may ever call it; raises `WebhookRefused` otherwise.

    Static checks only (no DNS): used when the config is written and before each send.
    """
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookRefused("webhook_url_malformed", "the URL contains spaces or control codes")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookRefused("webhook_url_malformed", "the URL cannot be parsed") from exc
    if parsed.scheme != "https" and not (parsed.scheme == "http" and policy.allow_http):
        allowed = "http or https" if policy.allow_http else "https"
        raise WebhookRefused("webhook_scheme", f"the webhook URL must use {allowed}")
    if parsed.userinfo:
        raise WebhookRefused("webhook_credentials", "the URL must not carry a user or password")
    host = parsed.host.lower().rstrip(".")
    if not host or not 0 < (parsed.port or 443) < 65536:
        raise WebhookRefused("webhook_url_malformed", "the URL has no host or a bad port")
    if policy.allows(host):
        return parsed
    ip = _literal(host)
    if ip is not None and not is_public(ip):
        raise WebhookRefused("webhook_address", "the URL points at a non-public address")
    if ip is None and ("." not in host or host == "localhost" or host.endswith(_INTERNAL_SUFFIXES)):
        raise WebhookRefused("webhook_address", "the URL names an internal host")
    return parsed


def vet(url: str, policy: Policy) -> tuple[httpx.URL, str]:
    """The URL and the one address to connect to, after resolving its host now."""
    parsed = check_url(url, policy)
    host = parsed.host.lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise WebhookRefused("webhook_unresolved", "the host name does not resolve") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise WebhookRefused("webhook_unresolved", "the host name does not resolve")
    if not policy.allows(host) and not all(is_public(a) for a in addresses):
        raise WebhookRefused("webhook_address", "the host resolves to a non-public address")
    return parsed, str(addresses[0])


def send(
    url: str,
    secret: str,
    payload: dict[str, object],
    policy: Policy,
    attempts: int = 4,
    timeout: float = 5,
    report: Report | None = None,
) -> bool:
    """POST `payload` to the vetted address of `url` (with retries); whether it was taken.

    `report` hears of every attempt (the delivery log); it must not raise.
    """
    tell: Report = report or (lambda _attempt, _status, _error: None)
    try:
        target, address = vet(url, policy)
    except WebhookRefused as exc:
        log.warning("webhook not sent: %s (%s)", exc, exc.reason)
        tell(1, None, f"refused: {exc.reason}")
        return False
    pinned = target.copy_with(host=address)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    body = json.dumps(payload, separators=(",", ":")).encode()
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout) as client:
        for attempt in range(attempts):
            timestamp = str(int(time.time()))
            headers = {
                "host": target.netloc.decode("ascii"),
                "content-type": "application/json",
                "x-facecrm-timestamp": timestamp,
                "x-facecrm-signature": signature(secret, timestamp, body),
            }
            try:
                response = client.post(pinned, content=body, headers=headers, extensions=extensions)
            except httpx.HTTPError as exc:
                log.warning(
                    "webhook delivery failed (attempt %d): %s", attempt + 1, type(exc).__name__
                )
                tell(attempt + 1, None, type(exc).__name__)
            else:
                error = "" if response.is_success else response.reason_phrase
                tell(attempt + 1, response.status_code, error)
                if response.status_code < 500:
                    return response.is_success
            if attempt + 1 < attempts:
                time.sleep(0.5 * 2**attempt)
    return False


def deliver(
    url: str,
    secret: str,
    payload: dict[str, object],
    policy: Policy,
    attempts: int = 4,
    report: Report | None = None,
) -> threading.Thread:
    """`send` in the background; returns the thread (tests join it)."""
    thread = threading.Thread(
        target=send,
        args=(url, secret, payload, policy, attempts),
        kwargs={"report": report},
        daemon=True,
        name="webhook",
    )
    thread.start()
    return thread
