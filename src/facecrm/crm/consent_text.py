"""The consent texts shown to customers, by version (a consent records the version)."""

from __future__ import annotations

from facecrm.crm.errors import InvalidError

CURRENT = "2026-11-v1"

TEXTS: dict[str, str] = {
    "2026-11-v1": (
        "I agree that this chain's stores may recognise my face so that staff can greet me "
        "and serve me better. My photos are turned into face templates that are used only "
        "for this purpose, in the chain's stores. People who have not agreed are never "
        "stored. I can withdraw this consent at any time, at a kiosk, with an associate or "
        "online; my templates are then deleted at once. I can ask for a copy of everything "
        "held about me, or for all of it to be erased."
    ),
}


def check(version: str) -> None:
    """Refuse a consent that names a text never shown: the record must say what was agreed.

    `customers.give_consent` applies it for every path (API, console, CLI, enrollment).
    """
    if version not in TEXTS:
        known = ", ".join(sorted(TEXTS))
        raise InvalidError(
            f"unknown consent text version; known: {known}", reason="bad_consent_version"
        )
