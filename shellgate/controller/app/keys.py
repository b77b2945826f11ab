"""Which key seals provider credentials: ``--encryption-key-file``, or on SQLite one kept
beside the database.

Every replica of a Postgres deployment must seal and open with the same keys, so there a key
file is required and ``serve`` refuses to start without one. A single SQLite gateway gets a
key generated on first start in its state directory (mode 0600), so credentials are sealed
by default; losing that file loses the credentials stored with it, which the log says once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shellgate.store import ConfigurationError
from shellgate.store.secrets import Keyring

log = logging.getLogger(__name__)

GENERATED_KEY_FILE = "encryption.key"


def load_keyring(key_file: str, state_dir: str, *, multiple_replicas: bool) -> Keyring:
    if key_file:
        return Keyring.from_file(key_file)
    if multiple_replicas:
        raise ConfigurationError(
            "--encryption-key-file (SHELLGATE_ENCRYPTION_KEY_FILE) is required with Postgres: "
            "every replica must seal and open provider credentials with the same key"
        )
    generated = Path(state_dir) / GENERATED_KEY_FILE
    if generated.exists():
        return Keyring.from_file(generated)
    keyring = Keyring.create_file(generated)
    log.warning(
        "no --encryption-key-file: generated %s to seal provider credentials; keep it with "
        "the database (the credentials cannot be read without it)",
        generated,
    )
    return keyring
