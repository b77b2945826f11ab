"""Secrets at rest: provider credentials are sealed with AES-256-GCM before they are stored.

Envelope encryption. Each stored row gets a fresh 256-bit data key; every secret value of the
row is encrypted with it (AES-256-GCM, a fresh 96-bit nonce per value), and the data key is
itself encrypted ("wrapped") with the key-encryption key (KEK) from the key file, also with
AES-256-GCM. A sealed value is one string that carries everything needed to open it:

    sgenc1:<kid>:<base64url(wrap nonce | wrapped data key | value nonce | ciphertext)>

``kid`` names the KEK (the first 16 hex digits of its SHA-256), so a keyring of several KEKs
opens values sealed under any of them while new values are sealed under the first: that is
what lets ``shellgate rotate-key`` re-seal rows one CAS at a time while replicas run. The
value's ciphertext is bound to where it belongs (the row id and the map key, as associated
data), so a sealed value copied to another provider or key does not open.

The key file holds one KEK per line, base64 of 32 random bytes; the first line seals. It is
read once at start and never logged. A value without the ``sgenc1:`` prefix is a row written
before sealing existed; it opens as itself, and the next write or ``rotate-key`` seals it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shellgate.store.errors import ConfigurationError, StoreError

PREFIX = "sgenc1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_KEY_BYTES = KEY_BYTES + TAG_BYTES
_WRAP_CONTEXT = b"shellgate data key"


class SecretError(StoreError):
    """A sealed value does not open: unknown key id, or tampered or misplaced ciphertext."""


@dataclass(frozen=True, slots=True)
class KeyEncryptionKey:
    kid: str
    key: bytes = b""

    def __repr__(self) -> str:  # never show the key itself
        return f"KeyEncryptionKey(kid={self.kid!r})"


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class Keyring:
    """Key-encryption keys by id; the first seals, every one opens."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigurationError("the encryption key file holds no key")
        self._keys = [KeyEncryptionKey(key_id(key), key) for key in keys]
        self._by_id = {k.kid: k for k in self._keys}

    @property
    def active(self) -> KeyEncryptionKey:
        return self._keys[0]

    def get(self, kid: str) -> KeyEncryptionKey | None:
        return self._by_id.get(kid)

    def with_active(self, key: bytes) -> Keyring:
        """This keyring with ``key`` in front: what ``rotate-key`` seals with."""
        return Keyring([key, *(k.key for k in self._keys if k.key != key)])

    @classmethod
    def from_file(cls, path: str | Path) -> Keyring:
        """Read a key file: one base64 key of 32 bytes per line (blank lines ignored)."""
        try:
            lines = Path(path).read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"cannot read encryption key file {str(path)!r}: {exc}"
            ) from None
        keys = []
        for number, line in enumerate(lines, start=1):
            try:
                key = base64.b64decode(line, validate=True)
            except binascii.Error:
                key = b""
            if len(key) != KEY_BYTES:
                raise ConfigurationError(
                    f"encryption key file {str(path)!r}, key {number}: "
                    f"expected base64 of {KEY_BYTES} bytes"
                )
            keys.append(key)
        return cls(keys)

    @classmethod
    def create_file(cls, path: str | Path) -> Keyring:
        """Write a new key file (mode 0600, refusing to overwrite) and return its keyring."""
        key = secrets.token_bytes(KEY_BYTES)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create encryption key file {str(path)!r}: {exc}"
            ) from None
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(key).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # rows sealed under it are fsynced: so is the key
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return cls([key])


class SecretSealer:
    """Seals and opens the secret values of one row (see the module docstring)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def active_kid(self) -> str:
        return self.keyring.active.kid

    def seal_map(self, values: MutableMapping[str, str], row_id: str) -> None:
        """Seal every value of ``values`` in place under one fresh data key."""
        data_key = AESGCM.generate_key(bit_length=256)
        kek = self.keyring.active
        wrap_nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = AESGCM(kek.key).encrypt(wrap_nonce, data_key, _WRAP_CONTEXT + kek.kid.encode())
        cipher = AESGCM(data_key)
        for name in list(values):
            nonce = secrets.token_bytes(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, values[name].encode(), _context(row_id, name))
            blob = base64.urlsafe_b64encode(wrap_nonce + wrapped + nonce + sealed).decode()
            values[name] = f"{PREFIX}:{kek.kid}:{blob}"

    def open_map(self, values: MutableMapping[str, str], row_id: str) -> None:
        """Open every sealed value of ``values`` in place; plain (older) values stay."""
        for name in list(values):
            values[name] = self.open(values[name], row_id, name)

    def open(self, value: str, row_id: str, name: str) -> str:
        if not is_sealed(value):
            return value
        _, kid, blob = value.split(":", 2)
        kek = self.keyring.get(kid)
        if kek is None:
            raise SecretError(f"a secret of {row_id} is sealed under unknown key {kid}")
        try:
            raw = base64.urlsafe_b64decode(blob)
            wrap_nonce, rest = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
            wrapped, rest = rest[:WRAPPED_KEY_BYTES], rest[WRAPPED_KEY_BYTES:]
            nonce, sealed = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
            data_key = AESGCM(kek.key).decrypt(wrap_nonce, wrapped, _WRAP_CONTEXT + kid.encode())
            return AESGCM(data_key).decrypt(nonce, sealed, _context(row_id, name)).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretError(f"a secret of {row_id} does not open (tampered or moved)") from None

    def sealed_under_active(self, values: Mapping[str, str]) -> bool:
        """True when every value is sealed under the active key (nothing to rotate)."""
        prefix = f"{PREFIX}:{self.active_kid}:"
        return all(value.startswith(prefix) for value in values.values())


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX + ":")


def _context(row_id: str, name: str) -> bytes:
    return f"{row_id}\x00{name}".encode()
