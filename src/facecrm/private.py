"""Files only the service account may read: the data directory is 0700, its files 0600.

Modes are set explicitly (not left to the umask): the directory holds the
database with everyone's profile, the master keys and the server secret.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path: Path, own: bool = False) -> Path:
    """Create `path` (and parents) if missing, 0700; with `own`, an existing one is made 0700.

    Without `own` an existing folder is left alone: it may be shared (a
    database URL pointing into /srv or /tmp must not change that folder).
    """
    if own or not path.exists():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def touch(path: Path) -> Path:
    """Create an empty file 0600 if missing (e.g. a database before SQLite opens it)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    os.chmod(path, FILE_MODE)
    return path


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`; the file is 0600 from its first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an old .tmp left by a crash keeps its mode otherwise
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)
