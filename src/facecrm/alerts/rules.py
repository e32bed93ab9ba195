"""Alert rules: what about a customer's arrival is worth a staff member's attention.

Pure functions over a `VisitContext`; each store can switch rules off and tune
them through `StoreConfig.rules` (defaults in `DEFAULT_RULES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

DEFAULT_RULES: dict[str, dict[str, object]] = {
    "vip_arrival": {"enabled": True, "tiers": ["vip", "gold"]},
    "out_of_stock_return": {"enabled": True},
    "unresolved_feedback": {"enabled": True},
    "long_absence": {"enabled": True, "days": 90},
    "preferred_advisor": {"enabled": True},
}


@dataclass(frozen=True, slots=True)
class VisitContext:
    """What the rules may look at when a customer arrives."""

    name: str
    tier: str
    at: datetime
    previous_visit: datetime | None
    wanted: list[tuple[str, bool]] = field(default_factory=list)  # (product, still out of stock)
    open_feedback: list[str] = field(default_factory=list)
    advisor_on_shift: str | None = None  # staff id of the preferred advisor, if on shift here
    advisor_name: str | None = None


@dataclass(frozen=True, slots=True)
class AlertDraft:
    rules: tuple[str, ...]
    message: str
    assignee_id: str | None


def merged(config: dict[str, object] | None) -> dict[str, dict[str, object]]:
    """The store's rule settings over the defaults."""
    rules = {name: dict(values) for name, values in DEFAULT_RULES.items()}
    for name, values in (config or {}).items():
        if name in rules and isinstance(values, dict):
            rules[name].update(values)
    return rules


def evaluate(ctx: VisitContext, config: dict[str, object] | None = None) -> AlertDraft | None:
    """One alert for the arrival, listing every reason; None when nothing is worth it."""
    rules = merged(config)
    fired: list[str] = []
    lines: list[str] = []
    if _on(rules, "vip_arrival") and ctx.tier in rules["vip_arrival"]["tiers"]:  # type: ignore[operator]
        fired.append("vip_arrival")
        lines.append(f"{ctx.tier.upper()} customer")
    if _on(rules, "out_of_stock_return") and ctx.wanted:
        fired.append("out_of_stock_return")
        for product, still_out in ctx.wanted:
            state = "still out of stock" if still_out else "back in stock now"
            lines.append(f"wanted {product} last time (out of stock then; {state})")
    if _on(rules, "unresolved_feedback") and ctx.open_feedback:
        fired.append("unresolved_feedback")
        lines.append("unresolved feedback: " + "; ".join(ctx.open_feedback[:3]))
    days = int(rules["long_absence"]["days"])  # type: ignore[call-overload]
    if _on(rules, "long_absence") and ctx.previous_visit is not None:
        absent = (ctx.at - ctx.previous_visit).days
        if absent >= days:
            fired.append("long_absence")
            lines.append(f"back after {absent} days")
    assignee = None
    if _on(rules, "preferred_advisor") and ctx.advisor_on_shift:
        fired.append("preferred_advisor")
        assignee = ctx.advisor_on_shift
        lines.append(f"preferred advisor {ctx.advisor_name or ''} is on shift: assigned".strip())
    if not fired:
        return None
    return AlertDraft(tuple(fired), f"{ctx.name} has arrived — " + " · ".join(lines), assignee)


def _on(rules: dict[str, dict[str, object]], name: str) -> bool:
    return bool(rules[name].get("enabled", True))
