"""The DPO's documents name only settings that exist, and the sign's version is the one a
store's set-up confirmation records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facecrm.config import Settings
from facecrm.crm.readiness import SIGNAGE_VERSION

DOCS = Path(__file__).resolve().parent.parent / "docs"
PRIVACY_DOCS = ("privacy.md", "dpia.md", "signage.md", "agent-sync.md")


@pytest.mark.parametrize("name", PRIVACY_DOCS)
def test_every_setting_named_is_a_real_setting(name: str) -> None:
    text = (DOCS / name).read_text()
    named = set(re.findall(r"FACECRM_([A-Z0-9_]+)", text))
    fields = {f.upper() for f in Settings.model_fields}
    assert not named - fields, f"{name} names settings that do not exist: {named - fields}"
    if name == "privacy.md":  # the retention and DPO settings are all answered there
        for setting in (
            "RETAIN_AUDIT_DAYS",
            "RETAIN_ALERTS_DAYS",
            "BACKUP_RETENTION_DAYS",
            "ERASURE_LOG_FILE",
            "REQUIRE_STORE_READINESS",
        ):
            assert setting in named


def test_the_sign_carries_the_version_stores_confirm() -> None:
    for name in ("signage.md", "signage.html", "privacy.md"):
        assert SIGNAGE_VERSION in (DOCS / name).read_text(), name
