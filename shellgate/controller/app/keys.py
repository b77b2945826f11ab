"""Which key seals provider credentials: ``--encryption-key-file``, or on SQLite one kept
beside the database file.

Every replica of a Postgres deployment must seal and open with the same keys, so there a key
file is required and ``serve`` refuses to start without one. A single SQLite gateway gets a
key generated on first start next to its database file (mode 0600), so credentials are sealed
by default and the key travels with the database whatever the working directory; losing that
file loses the credentials stored with it, which the log says once. An in-memory database
gets a key that lives as long as it does.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from shellgate.store import ConfigurationError, Store
from shellgate.store.secrets import KEY_BYTES, Keyring
from shellgate.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

GENERATED_KEY_FILE = "encryption.key"


def load_keyring(key_file: str, store: Store) -> Keyring:
    """The keyring for ``store`` (opened or not): the key file given, else as above."""
    if key_file:
        return Keyring.from_file(key_file)
    if not isinstance(store, SqliteStore):
        raise ConfigurationError(
            "--encryption-key-file (SHELLGATE_ENCRYPTION_KEY_FILE) is required with Postgres: "
            "every replica must seal and open provider credentials with the same key"
        )
    if store.in_memory:
        return Keyring([secrets.token_bytes(KEY_BYTES)])
    generated = Path(store.path).resolve().parent / GENERATED_KEY_FILE
    if generated.exists():
        return Keyring.from_file(generated)
    keyring = Keyring.create_file(generated)
    log.warning(
        "no --encryption-key-file: generated %s to seal provider credentials; keep it with "
        "the database (the credentials cannot be read without it)",
        generated,
    )
    return keyring
