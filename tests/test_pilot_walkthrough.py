"""The README's "Pilot in three stores", run as it is written, so it cannot drift.

The section's fenced blocks are the steps, in order, told apart by their info string:

* ```` ```bash pilot ````: shell commands, run by a real bash (`set -euo pipefail`), the
  real `facecrm` command and curl (with `fail-with-body` from a curlrc: a refused request
  fails the step). The variables a block sets are carried to the next ones, as in the
  operator's terminal.
* ```` ```bash pilot-serve ````: the server command, started as it is written (the real
  `facecrm serve`, a real uvicorn) and stopped at the end.
* ```` ```text pilot-console ````: console steps, one browser (a new Chromium context) per
  block, in a small language an operator reads as instructions: `open URL`, `fill LABEL =
  VALUE`, `select LABEL = OPTION`, `check LABEL`, `upload LABEL = FILE`, `click BUTTON OR
  LINK`, `see TEXT`, `reload`. Labels, buttons and texts are found the way a person finds
  them (by their visible words), so a renamed button breaks the walkthrough here.
  `wait SECONDS` is a person's pace, where the product refuses a faster one (bots).
* ```` ```text pilot-phone ````: the same language on a customer's phone (a phone-sized,
  touch Chromium page), one phone for every such block: the page stays open between them
  (the selfie stays in the phone while the operator reads the code in the terminal).

One block only is not run: the installation (`pip install`), since this is the installed
product. The ports 8000 (server) and 9000 (webhook receiver) become free ports; the steps
run in a temporary directory where `tests/data` and `examples` are those of this checkout
(the README runs from a checkout). Everything else is as written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from server import free_port

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Pilot in three stores"
FENCE = re.compile(r"^```(\w*)(?:[ \t]+([\w-]+))?[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
KINDS = {
    "pilot": "shell",
    "pilot-serve": "serve",
    "pilot-console": "console",
    "pilot-phone": "phone",
}
VERBS = {"open", "fill", "select", "check", "upload", "click", "see", "reload", "wait"}
PHONE = {"width": 390, "height": 844}
DATA_DIR = "pilot-data"  # the README's FACECRM_DATA_DIR=$PWD/pilot-data
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Step:
    kind: str  # shell, serve, console, phone or manual
    text: str
    line: int  # in README.md, for the failure message


def pilot_steps(readme: str) -> list[Step]:
    """The section's fenced blocks, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    first_line = readme[:start].count("\n") + 1
    return [
        Step(
            KINDS.get(m.group(2) or "", "manual"),
            m.group(3),
            first_line + section[: m.start()].count("\n"),
        )
        for m in FENCE.finditer(section)
    ]


def test_the_section_is_made_of_steps_the_walkthrough_runs() -> None:
    """Every block is run but the installation, every console line is understood, and
    the section covers what a pilot needs (so a step cannot be dropped unnoticed)."""
    steps = pilot_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    manual = [s for s in steps if s.kind == "manual"]
    assert len(manual) == 1 and "pip install" in manual[0].text, manual
    assert sum(s.kind == "serve" for s in steps) == 1
    for step in steps:
        if step.kind in ("console", "phone"):
            for line in step.text.strip().splitlines():
                assert line.split(maxsplit=1)[0] in VERBS, (step.line, line)
    shell = "\n".join(s.text for s in steps if s.kind in ("shell", "serve"))
    for needed in (
        f"export FACECRM_DATA_DIR=$PWD/{DATA_DIR}",
        "facecrm migrate",
        "facecrm stores add",
        "--role manager --store",
        "--role associate --store",
        "--kind kiosk",
        "--kind agent",
        "--kind pos",
        "facecrm serve",
        "/consent-texts",
        "/readiness/",
        "/customers/$KIT/faces",
        "--exit-when-done",
        "/pos/customer?loyalty_id=",
        "/purchases",
        "/export",
        "-X DELETE $API/customers/",
        "facecrm eval",
        "/webhook",
        "facecrm stores qr",
        "--svg",
        "facecrm otp outbox",
    ):
        assert needed in shell, needed
    console = "\n".join(s.text for s in steps if s.kind == "console")
    for needed in ("/console/kiosk", "Confirm", "Claim", "Greeted", "Not this person", "204"):
        assert needed in console, needed
    phone = "\n".join(s.text for s in steps if s.kind == "phone")
    for needed in ("$SELF_URL", "Take a selfie", "Send me a code", "$CODE", "Join", "/self/me"):
        assert needed in phone, needed


# -- running it ------------------------------------------------------------------------


@dataclass
class Walk:
    cwd: Path
    env: dict[str, str]  # the operator's terminal: carried from block to block
    ports: dict[str, int]
    server: subprocess.Popen[bytes] | None = None
    server_log: Path | None = None
    phone: Page | None = None  # the customer's phone: one page, kept from block to block
    phone_errors: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # a shell block's text: its stdout
    finished: bool = False  # every step ran


def substitute(text: str, ports: dict[str, int]) -> str:
    """The README's example ports become the free ports of this run."""
    for example, port in ports.items():
        text = re.sub(rf"\b{example}\b", str(port), text)
    return text


def expand(text: str, env: dict[str, str]) -> str:
    """$NAME in a console step: the value the shell steps gave it (an unknown name fails)."""

    def value(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"${m.group(1)} is not set by an earlier step"
        return env[m.group(1)]

    return re.sub(r"\$([A-Z_][A-Z0-9_]*)", value, text)


def run_shell(walk: Walk, step: Step) -> None:
    state = walk.cwd / ".pilot-state"
    script = f"set -euo pipefail -a\n{substitute(step.text, walk.ports)}\nenv -0 > {state}\n"
    done = subprocess.run(
        ["bash", "-c", script], cwd=walk.cwd, env=walk.env, capture_output=True, timeout=900
    )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"README line {step.line}: exit {done.returncode}\n{output}"
    walk.outputs[step.text] = done.stdout.decode(errors="replace")
    pairs = (item.split("=", 1) for item in state.read_bytes().decode().split("\0") if item)
    walk.env = {name: value for name, value in pairs if not name.startswith("BASH_")}


def start_server(walk: Walk, step: Step) -> None:
    (command,) = [line for line in step.text.strip().splitlines() if line.strip()]
    assert "facecrm serve" in command
    walk.server_log = walk.cwd / "server.log"
    with walk.server_log.open("wb") as log:
        walk.server = subprocess.Popen(
            ["bash", "-c", substitute(command, walk.ports)],
            cwd=walk.cwd,
            env=walk.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
        )
    deadline = time.monotonic() + 180
    while True:
        assert walk.server.poll() is None, f"the server stopped:\n{walk.server_log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{walk.ports['8000']}/healthz").is_success:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def new_page(browser: Browser, **options: object) -> tuple[Page, list[str]]:
    """A page in a fresh browser context, and the script errors it will collect."""
    context = browser.new_context(**options)  # type: ignore[arg-type]
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    return page, errors


def run_console(walk: Walk, step: Step, browser: Browser) -> None:
    page, errors = new_page(browser)
    try:
        run_lines(walk, step, page)
        assert not errors, errors
    finally:
        page.context.close()


def run_phone(walk: Walk, step: Step, browser: Browser) -> None:
    """A block on the customer's phone: the page the previous phone block left open."""
    if walk.phone is None:
        walk.phone, walk.phone_errors = new_page(
            browser, viewport=PHONE, is_mobile=True, has_touch=True
        )
    run_lines(walk, step, walk.phone)
    assert not walk.phone_errors, walk.phone_errors


def run_lines(walk: Walk, step: Step, page: Page) -> None:
    previous = ""
    for line in step.text.strip().splitlines():
        verb, _, rest = line.strip().partition(" ")
        argument = expand(substitute(rest.strip(), walk.ports), walk.env)
        try:
            console_action(page, walk, verb, argument, previous)
        except (AssertionError, Exception) as exc:
            raise AssertionError(f"README line {step.line}, `{line.strip()}`: {exc}") from exc
        previous = verb


def labelled(page: Page, label: str):  # type: ignore[no-untyped-def]
    """The control whose label starts with these words (a select's or a textarea's
    accessible name also holds its value)."""
    return page.get_by_label(re.compile(r"^\s*" + re.escape(label)))


def console_action(page: Page, walk: Walk, verb: str, argument: str, previous: str) -> None:
    label, _, value = (part.strip() for part in argument.partition(" = "))
    if verb == "open":
        page.goto(argument)
    elif verb == "fill":
        labelled(page, label).fill(value)
    elif verb == "select":
        labelled(page, label).select_option(value)
    elif verb == "check":
        labelled(page, label).check()
    elif verb == "upload":
        labelled(page, label).set_input_files(walk.cwd / value)
    elif verb == "click":
        target = page.get_by_role("button", name=argument, exact=True).or_(
            page.get_by_role("link", name=argument, exact=True)
        )
        target.first.click()
        page.wait_for_load_state()
    elif verb == "reload":
        page.reload()
    elif verb == "wait":
        time.sleep(float(argument))
    elif verb == "see":
        text = page.get_by_text(re.compile(re.escape(argument))).first
        if previous == "reload":  # what an operator does: reload until it is there
            deadline = time.monotonic() + 30
            while not text.is_visible() and time.monotonic() < deadline:
                time.sleep(1)
                page.reload()
        expect(text).to_be_visible(timeout=90_000)
    else:
        raise AssertionError(f"unknown console step {verb!r}")


@pytest.fixture()
def walk(tmp_path: Path, model_cache: Path) -> Iterator[Walk]:
    """A fresh terminal: a temporary directory laid out like a checkout, no FACECRM_
    setting, this checkout's facecrm on the PATH."""
    for name in ("tests/data", "examples"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    # the converted models, shared with the rest of the session (a cache, not data)
    (tmp_path / DATA_DIR / "cache").mkdir(parents=True)
    (tmp_path / DATA_DIR / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    (tmp_path / ".curlrc").write_text("fail-with-body\nshow-error\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECRM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env["CURL_HOME"] = str(tmp_path)
    env["COLUMNS"] = "200"
    assert shutil.which("facecrm", path=env["PATH"]), "the facecrm command is not installed"
    walk = Walk(tmp_path, env, {"8000": free_port(), "9000": free_port()})
    yield walk
    if walk.phone is not None:
        walk.phone.context.close()
    if walk.server is not None:
        os.killpg(walk.server.pid, signal.SIGTERM)
        try:
            walk.server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(walk.server.pid, signal.SIGKILL)
    receiver = walk.env.get("RECEIVER")
    if receiver and not walk.finished:  # the last step kills it; after a failure, here
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(receiver), signal.SIGTERM)


def test_the_pilot_in_three_stores_runs_as_written(walk: Walk, browser: Browser) -> None:
    steps = pilot_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    for step in steps:
        started = time.monotonic()
        if step.kind == "shell":
            run_shell(walk, step)
        elif step.kind == "serve":
            start_server(walk, step)
        elif step.kind == "console":
            run_console(walk, step, browser)
        elif step.kind == "phone":
            run_phone(walk, step, browser)
        print(f"README line {step.line} ({step.kind}): {time.monotonic() - started:.1f} s")

    walk.finished = True

    # what the operator saw and what the steps left behind
    def output(command: str) -> str:
        (found,) = [out for text, out in walk.outputs.items() if command in text]
        return found

    assert all(code in output("facecrm stores list") for code in ("PAR1", "LYO1", "MRS1"))
    self_url = output("facecrm stores qr").strip()  # the link printed, the QR code written
    assert re.fullmatch(rf"http://127\.0\.0\.1:{walk.ports['8000']}/self/[\w-]{{32}}", self_url)
    assert "<svg" in (walk.cwd / "par1-door.svg").read_text()
    assert re.fullmatch(r"[0-9]{6}", walk.env["CODE"])  # read from the outbox
    assert '"Kit Harington"' in output("/pos/customer?loyalty_id=")  # the till found him
    after_erasure = output("-X DELETE $API/customers/").splitlines()
    assert after_erasure[0] == "Kit Harington"  # the export, read before the erasure
    assert after_erasure[1].startswith("[]")  # the search after it (curl adds no newline)
    hook_log = (walk.cwd / "crm-hook.log").read_text()
    assert '"POST /facecrm HTTP/1.1" 204' in hook_log and "Traceback" not in hook_log, hook_log
    disputes = (walk.cwd / "disputes.jsonl").read_text().splitlines()
    assert len(disputes) == 2 and '"source": "lookup"' in disputes[1]  # Not this person
