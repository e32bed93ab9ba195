"""A malformed FACECRM_ setting is one `error:` line naming it, never a traceback."""

from __future__ import annotations

from pathlib import Path

from conftest import Cli


def test_a_list_setting_that_is_not_json_is_named_in_one_line(cli: Cli, tmp_path: Path) -> None:
    # the README's walkthrough sets FACECRM_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]'; a plain
    # address used to end the command with pydantic's SettingsError and a stack trace
    done = cli(tmp_path / "data", "stores", "list", env={"FACECRM_WEBHOOK_ALLOW_HOSTS": "10.0.0.9"})
    assert done.returncode == 1
    assert "FACECRM_WEBHOOK_ALLOW_HOSTS" in done.stderr and '["a", "b"]' in done.stderr
    assert "Traceback" not in done.stderr and "10.0.0.9" not in done.stderr  # no value echoed
