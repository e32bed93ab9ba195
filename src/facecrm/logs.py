"""Structured (JSON lines) logging for the server and the agent.

Log records carry events and counts; code never passes templates, photos,
boxes or anything about a face that matched no customer to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception type)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry)


class DropQueryStrings(logging.Filter):
    """Access-log lines without query strings: a search (`?q=ada`) is personal data.

    It belongs in the access-controlled audit trail, not in logs shipped elsewhere.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args  # uvicorn: (client, method, path with query, http version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], *args[3:])
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Send facecrm's logs to stderr as JSON lines; keep query strings out of access logs."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryStrings) for f in access.filters):
        access.addFilter(DropQueryStrings())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("facecrm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
