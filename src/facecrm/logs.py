"""Structured (JSON lines) logging for the server and the agent.

Log records carry events and counts; code never passes templates, photos,
boxes or anything about a face that matched no customer to a logger.
Exceptions are logged as their type and stack frames, never their message:
messages can carry what the request carried (a database error quotes its bound
parameters, an upload's file name, a customer's e-mail). The access log keeps
the path and drops the query string, where searches put names and e-mails.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType

MAX_FRAMES = 30
ACCESS_LOGGER = "uvicorn.access"


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


def configure_logging(level: int = logging.INFO) -> None:
    """Send every log (facecrm, uvicorn, libraries, warnings) to stderr as JSON lines.

    `facecrm serve` runs uvicorn with `log_config=None` so that uvicorn keeps these
    handlers instead of installing its plain-text ones.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
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
