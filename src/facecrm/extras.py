"""The optional parts of facecrm (pip extras) and which one a missing module belongs to.

The core (vision, settings, the CLI) is what both a store box and a server need:
`facecrm[agent]` adds the agent's HTTP client, `facecrm[server]` the API, the console and
the database, `facecrm[postgres]` the PostgreSQL driver and pgvector, `facecrm[eval]`
plots, `facecrm[attributes]` the face-attribute stage. Server-only modules are imported
inside the code that needs them, so that an agent-only install runs `facecrm agent`;
anything else says which extra to add.
"""

from __future__ import annotations

from facecrm.errors import MissingExtraError

# top-level import name -> the extra that installs it (pyproject.toml; tests/test_extras.py
# checks the two agree)
EXTRA_OF: dict[str, str] = {
    "httpx": "agent",
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "multipart": "server",
    "jinja2": "server",
    "jwt": "server",
    "cryptography": "server",
    "argon2": "server",
    "email_validator": "server",
    "sqlalchemy": "server",
    "alembic": "server",
    "qrcode": "server",
    "psycopg": "postgres",
    "pgvector": "postgres",
    "matplotlib": "eval",
    "h5py": "attributes",
}


def missing_extra(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The `MissingExtraError` for a failed import of an extra's module (None: not one)."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    return MissingExtraError(extra, top) if extra else None
