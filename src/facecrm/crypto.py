"""Encryption at rest: a data key per customer, wrapped by a master key.

* Templates and kept photos are sealed with AES-256-GCM under the customer's
  data key (DEK); the associated data binds each ciphertext to its customer.
* DEKs are stored only wrapped (AES-256-GCM) by a master key from a
  `KeyProvider`: an environment variable, a key file, or a KMS behind the same
  protocol (`current_id`, `wrap`, `unwrap`, `refresh`).
* Erasing a customer destroys their DEK ("crypto-shredding"): copies of their
  templates in older backups can no longer be decrypted.
* `rotate` re-wraps every DEK under a new master key, one customer at a time,
  while the server keeps running: providers unwrap with any key they hold.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from facecrm import private
from facecrm.config import Settings
from facecrm.errors import FacecrmError

NONCE = 12


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under master keys; a KMS client implements the same.

    The services use nothing else, so a KMS needs no `isinstance` special case:

    * `current_id` names the master key that wraps new data keys (and re-wraps on rotation);
    * `wrap` returns that id with the wrapped key; `unwrap` accepts any id it ever returned
      (older master keys stay readable until `facecrm keys rotate --retire`);
    * `refresh` re-reads the provider's key list (a key file another process appended
      to, a KMS alias moved to a new key) before a rotation.
    """

    @property
    def current_id(self) -> str: ...

    def wrap(self, dek: bytes) -> tuple[str, bytes]: ...
    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...
    def refresh(self) -> None: ...


class CryptoError(FacecrmError, RuntimeError):
    """A key is missing, malformed, or a ciphertext does not authenticate (a server fault)."""

    reason = "crypto_error"


def _seal(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE)
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def _open(key: bytes | AESGCM, sealed: bytes, aad: bytes) -> bytes:
    try:
        aead = key if isinstance(key, AESGCM) else AESGCM(key)
        return aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad)
    except Exception as exc:  # InvalidTag: wrong key or altered data
        raise CryptoError("the data does not decrypt with this key") from exc


@dataclass
class LocalKeyProvider:
    """Master keys held in this process: `{key_id: 32 bytes}`; `current_id` wraps.

    With a key `path`, an unknown key id makes it re-read the file once, so a
    running server follows `facecrm keys rotate` without a restart.
    """

    keys: dict[str, bytes]
    current_id: str
    path: Path | None = None
    # the cipher object of each master key, built once: a full agent sync unwraps one data
    # key per customer, and building the object cost more than the decryption
    _aeads: dict[str, AESGCM] = field(default_factory=dict, init=False, repr=False)

    def _aead(self, key_id: str) -> AESGCM:
        aead = self._aeads.get(key_id)
        if aead is None:
            aead = self._aeads[key_id] = AESGCM(self.keys[key_id])
        return aead

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        return self.current_id, _seal(self._aead(self.current_id), dek, self.current_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        if key_id not in self.keys and self.path is not None:
            self.refresh()
        if key_id not in self.keys:
            raise CryptoError(f"master key {key_id!r} is not available")
        return _open(self._aead(key_id), wrapped, key_id.encode())

    def refresh(self) -> None:
        """Re-read the key file (an environment key list cannot change in-process)."""
        if self.path is not None:
            self.keys = _parse(self.path.read_text())
            self.current_id = list(self.keys)[-1]
            self._aeads = {}


def _parse(text: str) -> dict[str, bytes]:
    """Key lines `key_id:base64` (the last line is the current key).

    A malformed line is named by its position, never quoted: it may hold a key.
    """
    keys: dict[str, bytes] = {}
    lines = [line.strip() for line in text.splitlines()]
    for n, line in enumerate([x for x in lines if x and not x.startswith("#")], 1):
        key_id, _, value = line.partition(":")
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error
            raw = b""
        if not key_id or len(raw) != 32:
            raise CryptoError(f"master key {n} is not 'id:base64' of 32 bytes")
        keys[key_id] = raw
    if not keys:
        raise CryptoError("no master key")
    return keys


def key_file(settings: Settings) -> Path:
    return settings.master_key_file or settings.data_dir / "master.keys"


def new_key_line() -> tuple[str, str]:
    key_id = "mk-" + secrets.token_hex(4)
    return key_id, f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def key_provider(settings: Settings) -> KeyProvider:
    """`FACECRM_MASTER_KEY` (`id:base64`), else the key file (created on first use).

    A deployment with a KMS passes its own `KeyProvider` to `Runtime(keys=...)` instead.
    """
    if settings.master_key:
        keys = _parse(settings.master_key.replace(",", "\n"))
        return LocalKeyProvider(keys, list(keys)[-1])
    path = key_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _, line = new_key_line()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("# facecrm master keys: id:base64; the last one wraps new keys\n")
                fh.write(line + "\n")
        except FileExistsError:
            pass
    keys = _parse(path.read_text())
    return LocalKeyProvider(keys, list(keys)[-1], path)


def add_master_key(settings: Settings) -> str:
    """Append a new master key to the key file; it wraps from now on. Returns its id."""
    if settings.master_key:
        raise CryptoError(
            "the master keys come from FACECRM_MASTER_KEY: append the new key there "
            "(old,new) and run `facecrm keys rotate` again"
        )
    key_provider(settings)  # make sure the file exists
    key_id, line = new_key_line()
    with key_file(settings).open("a") as fh:
        fh.write(line + "\n")
    return key_id


def drop_master_keys(settings: Settings, keep: set[str]) -> list[str]:
    """Remove every master key not in `keep` from the key file; returns the removed ids."""
    path = key_file(settings)
    lines = path.read_text().splitlines()
    kept, removed = [], []
    for line in lines:
        key_id = line.partition(":")[0].strip()
        if line.strip() and not line.startswith("#") and key_id not in keep:
            removed.append(key_id)
        else:
            kept.append(line)
    # created 0600 before the first key byte is written (a chmod afterwards leaves a window)
    private.write_file(path, ("\n".join(kept) + "\n").encode())
    return removed


@dataclass
class CustomerCipher:
    """Seals and opens one customer's data with their data key."""

    customer_id: str
    dek: bytes = field(repr=False)
    _aead: AESGCM | None = field(default=None, init=False, repr=False)

    def _key(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self.dek)
        return self._aead

    def seal(self, data: bytes, label: str) -> bytes:
        return _seal(self._key(), data, f"{self.customer_id}:{label}".encode())

    def open(self, sealed: bytes, label: str) -> bytes:
        return _open(self._key(), sealed, f"{self.customer_id}:{label}".encode())


def new_dek() -> bytes:
    return AESGCM.generate_key(bit_length=256)
