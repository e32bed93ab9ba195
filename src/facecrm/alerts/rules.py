"""Alert rules: what about a customer's arrival is worth a staff member's attention.

Pure functions over a `VisitContext`; each store can switch rules off and tune
them through `StoreConfig.rules`. `RuleSettings` is the one schema for those
overrides: it bounds every value and refuses unknown rules and keys, so a bad
setting is a 422 when it is written, never an error on a later visit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facecrm.crm.errors import InvalidError
from facecrm.crm.models import Tier


class Rule(BaseModel):
    """A rule without parameters: on or off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: Annotated[bool, Field(strict=True)] = True


class OffRule(Rule):
    """A rule without parameters that a store must switch on."""

    enabled: Annotated[bool, Field(strict=True)] = False


class VipArrival(Rule):
    tiers: Annotated[list[Tier], Field(min_length=1, max_length=len(Tier))] = [
        Tier.VIP,
        Tier.GOLD,
    ]


class LongAbsence(Rule):
    days: Annotated[int, Field(strict=True, ge=1, le=3650)] = 90


class CameraSilent(Rule):
    """Alert the store's managers when a camera gave no frame for `minutes` (not a visit
    rule: `alerts.cameras` applies it)."""

    minutes: Annotated[float, Field(strict=True, gt=0, le=24 * 60)] = 5.0


class CheckoutQueue(Rule):
    """Checkout queues (issue 13; applied on the store agent, `agent.analytics`): alert when
    someone has waited `wait_minutes` and looked unhappy for `unhappy_seconds`, or when
    `max_length` people are in the queue. The unhappy half needs the sentiment switch."""

    wait_minutes: Annotated[float, Field(strict=True, gt=0, le=240)] = 5.0
    unhappy_seconds: Annotated[float, Field(strict=True, ge=0, le=3600)] = 30.0
    max_length: Annotated[int, Field(strict=True, ge=2, le=100)] = 6
    cooldown_minutes: Annotated[float, Field(strict=True, ge=0, le=240)] = 5.0


class RuleSettings(BaseModel):
    """A store's rule overrides; a rule or key left out keeps its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vip_arrival: VipArrival = VipArrival()
    out_of_stock_return: Rule = Rule()
    unresolved_feedback: Rule = Rule()
    long_absence: LongAbsence = LongAbsence()
    preferred_advisor: Rule = Rule()
    camera_silent: CameraSilent = CameraSilent()
    any_arrival: OffRule = OffRule()  # every opted-in customer: for small stores, off by default
    checkout_queue: CheckoutQueue = CheckoutQueue()


DEFAULT_RULES: dict[str, dict[str, object]] = RuleSettings().model_dump(mode="json")


def parse(overrides: Mapping[str, Any]) -> RuleSettings:
    """Strictly validated overrides (raises `pydantic.ValidationError`)."""
    return RuleSettings.model_validate(dict(overrides))


def stored(raw: object) -> tuple[RuleSettings, list[str]]:
    """The settings of a stored config row, however it was written, and what was wrong.

    Rows written before validation may hold anything. A broken rule is switched
    off (its intent is unknown); a row that is not an object leaves the defaults.
    Problems name rules, keys and error types only, never the stored values.
    """
    if raw is None:
        return RuleSettings(), []
    if not isinstance(raw, dict):
        return RuleSettings(), [f"rules are a {type(raw).__name__}, not an object"]
    problems: list[str] = []
    good: dict[str, object] = {}
    for name, values in raw.items():
        if name not in RuleSettings.model_fields:
            problems.append(f"unknown rule {str(name)[:40]!r}")
            continue
        try:
            good[name] = getattr(parse({name: values}), name)
        except ValidationError as exc:
            where = "; ".join(
                ".".join(str(p) for p in e["loc"]) + f": {e['type']}" for e in exc.errors()
            )
            problems.append(f"{name} switched off ({where})")
            good[name] = {"enabled": False}
    return RuleSettings.model_validate(good), problems


@dataclass(frozen=True, slots=True)
class VisitContext:
    """What the rules may look at when a customer arrives (the receiving store's data only)."""

    name: str
    tier: str
    at: datetime
    previous_visit: datetime | None  # the last undisputed visit to this store
    wanted: list[tuple[str, bool]] = field(default_factory=list)  # (product, still out of stock)
    open_feedback: list[str] = field(default_factory=list)
    advisor_on_shift: str | None = None  # staff id of the preferred advisor, if on shift here
    advisor_name: str | None = None
    visits_here: int = 0  # undisputed visits to this store before this one


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True, slots=True)
class AlertDraft:
    rules: tuple[str, ...]
    message: str
    assignee_id: str | None
    reasons: tuple[str, ...] = ()  # one plain sentence per fired rule, for staff


def evaluate(
    ctx: VisitContext, config: RuleSettings | Mapping[str, Any] | None = None
) -> AlertDraft | None:
    """One alert for the arrival, listing every reason; None when nothing is worth it.

    `lines` make the one-line message (webhooks, old consoles); `reasons` say the same in
    whole sentences, one per fired rule, for the staff member who walks over.
    """
    s = config if isinstance(config, RuleSettings) else parse(config or {})
    fired: list[str] = []
    lines: list[str] = []
    reasons: list[str] = []
    if s.vip_arrival.enabled and ctx.tier in s.vip_arrival.tiers:
        fired.append("vip_arrival")
        lines.append(f"{ctx.tier.upper()} customer")
        reasons.append(f"A {ctx.tier.upper()} customer: the store greets every one of them.")
    if s.out_of_stock_return.enabled and ctx.wanted:
        fired.append("out_of_stock_return")
        for product, still_out in ctx.wanted:
            state = "still out of stock" if still_out else "back in stock now"
            lines.append(f"wanted {product} last time (out of stock then; {state})")
            reasons.append(f"Wanted {product} on an earlier visit; it is {state}.")
    if s.unresolved_feedback.enabled and ctx.open_feedback:
        fired.append("unresolved_feedback")
        lines.append("unresolved feedback: " + "; ".join(ctx.open_feedback[:3]))
        reasons.append(
            "Left feedback that is not resolved yet: " + "; ".join(ctx.open_feedback[:3])
        )
    if s.long_absence.enabled and ctx.previous_visit is not None:
        absent = (ctx.at - ctx.previous_visit).days
        if absent >= s.long_absence.days:
            fired.append("long_absence")
            lines.append(f"back after {absent} days")
            reasons.append(
                f"Back after {absent} days away (last visit here {ctx.previous_visit:%Y-%m-%d})."
            )
    assignee = None
    if s.preferred_advisor.enabled and ctx.advisor_on_shift:
        fired.append("preferred_advisor")
        assignee = ctx.advisor_on_shift
        lines.append(f"preferred advisor {ctx.advisor_name or ''} is on shift: assigned".strip())
        advisor = (
            f"Their preferred advisor {ctx.advisor_name}"
            if ctx.advisor_name
            else "Their preferred advisor"
        )
        reasons.append(f"{advisor} is on shift; the alert is assigned to them.")
    if s.any_arrival.enabled and not fired:  # only when no other rule says more
        fired.append("any_arrival")
        nth = _ordinal(ctx.visits_here + 1)
        lines.append(f"opted-in customer, {nth} visit here")
        reasons.append(f"An opted-in customer has arrived ({nth} visit to this store).")
    if not fired:
        return None
    return AlertDraft(
        tuple(fired),
        f"{ctx.name} has arrived — " + " · ".join(lines),
        assignee,
        tuple(reasons),
    )


DESCRIPTIONS: dict[str, str] = {
    "vip_arrival": "A customer of one of the listed tiers arrives.",
    "out_of_stock_return": (
        "A customer arrives who wanted a product this store had out of stock "
        "(the alert says whether it is back)."
    ),
    "unresolved_feedback": "A customer arrives whose feedback in this store is unresolved.",
    "long_absence": "A customer comes back after at least `days` days away from this store.",
    "preferred_advisor": (
        "The customer's preferred advisor is on shift in this store: the alert is assigned to them."
    ),
    "any_arrival": (
        "Any opted-in customer arrives (when no other rule fired): for small stores; "
        "off by default."
    ),
    "camera_silent": (
        "A camera of the store's agent has given no frame for `minutes`: the store's "
        "managers are alerted (once per silence)."
    ),
    "checkout_queue": (
        "A checkout queue needs a till or a colleague: someone has waited `wait_minutes` and "
        "looked unhappy for `unhappy_seconds` (needs the sentiment switch), or `max_length` "
        "people queue. Once per queue per `cooldown_minutes`; no face, no identity."
    ),
}
"""What each rule of `RuleSettings` does, in the words the console and the API show
(tests/test_admin_api.py keeps one per rule)."""


def checked(values: Mapping[str, Any]) -> RuleSettings:
    """`parse`, with a refusal as an `InvalidError` naming the first bad setting's path
    (the API's PUT and the console's form refuse the same things the same way)."""
    try:
        return parse(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidError(f"rules.{where}: {first['msg']}", reason="bad_rule") from exc
