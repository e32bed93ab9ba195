"""Structured (JSON lines) logging for the server and the agent.

Log records carry events and counts; code never passes templates, photos,
boxes or anything about a face that matched no customer to a logger.
Exceptions are logged as their type and stack frames, never their message:
messages can carry what the request carried (a database error quotes its bound
parameters, an upload's file name, a customer's e-mail). The access log keeps
the path and drops the query string, where searches put names and e-mails.

Camera URLs carry passwords (`rtsp://user:password@host/...`, `?password=...`). They are
masked where they are written (`mask_secrets` at the source), again by a filter on every
handler (`MaskSecrets`, for what a library logs), and, in the agent, in what native code
(OpenCV, ffmpeg) writes to file descriptor 2 (`mask_native_stderr`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import traceback
from datetime import UTC, datetime
from types import TracebackType

MAX_FRAMES = 30
ACCESS_LOGGER = "uvicorn.access"

# scheme://user:password@ -- the password is everything up to the last "@" of the authority
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@?#'\"]*):[^\s/?#'\"]*@")
# ?password=...&token=... -- query or matrix parameters that hold a credential
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:[a-z0-9_.-]*(?:pass|pwd|secret|token|key|auth|sig|credential)[a-z0-9_.-]*)=)"
    r"[^&;#\s'\"]*"
)


def mask_secrets(text: str) -> str:
    """`text` with URL passwords and credential query parameters replaced by `***`.

    `rtsp://admin:hunter2@10.0.0.7/s?password=x&ch=1` -> `rtsp://admin:***@10.0.0.7/s?password=***&ch=1`.
    Idempotent, so masking at the source and again in a handler is harmless.
    """
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


def _frames(tb: TracebackType | None) -> list[str]:
    """`file:line in function` for each frame, innermost last (code locations only)."""
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)][-MAX_FRAMES:]


def _causes(exc: BaseException) -> list[str]:
    """The types of the exceptions `exc` was raised from or while handling."""
    out: list[str] = []
    seen = {id(exc)}
    link = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen and len(out) < 10:
        seen.add(id(link))
        out.append(type(link).__name__)
        link = link.__cause__ or link.__context__
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and for errors type and frames."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            _, exc, tb = record.exc_info
            entry["error"] = record.exc_info[0].__name__
            entry["trace"] = _frames(tb)
            if exc is not None and (causes := _causes(exc)):
                entry["causes"] = causes
        return json.dumps(entry)


class DropQueryString(logging.Filter):
    """Cut the query string from uvicorn's access-log path (searches carry personal data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn logs (client address, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


class MaskSecrets(logging.Filter):
    """Mask camera passwords in every record a handler emits (see `mask_secrets`).

    On the handler, not a logger: a logger's filters do not see records propagated from
    its children, so a library's logger (or a forgotten `log.warning("%s", url)`) would
    slip past. The message is rendered once, masked, and its arguments dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_native_stderr: threading.Thread | None = None


def mask_native_stderr() -> None:
    """Route file descriptor 2 through a pipe whose lines are masked before they reach the
    real stderr: OpenCV and ffmpeg print from C (e.g. ffmpeg names the file or URL it could
    not open), past Python's logging. Installed once, by the agent; undone at exit, after
    the last line (an `error:` line printed while exiting) has been written.
    """
    global _native_stderr
    if _native_stderr is not None:
        return
    try:
        real = os.dup(2)
    except OSError:  # no fd 2 (a detached process): nothing to mask
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = mask_secrets(line.decode("utf-8", "replace"))
                os.write(real, text.encode("utf-8"))

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer is gone: the pump reads to the end
        thread.join(timeout=5)

    thread = threading.Thread(target=pump, daemon=True, name="stderr-mask")
    thread.start()
    _native_stderr = thread
    atexit.register(restore)


def configure_logging(level: int = logging.INFO) -> None:
    """Send every log (facecrm, uvicorn, libraries, warnings) to stderr as JSON lines.

    `facecrm serve` runs uvicorn with `log_config=None` so that uvicorn keeps these
    handlers instead of installing its plain-text ones.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MaskSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for name in ("facecrm", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(level)
        logger.propagate = True
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers.clear()
    if not any(isinstance(f, DropQueryString) for f in access.filters):
        access.addFilter(DropQueryString())
    logging.captureWarnings(True)
