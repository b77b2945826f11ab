"""A sealer with a key made for the test: tests seal credentials as production does."""

from __future__ import annotations

import secrets

from shellgate.store.secrets import KEY_BYTES, Keyring, SecretSealer


def new_sealer() -> SecretSealer:
    return SecretSealer(Keyring([secrets.token_bytes(KEY_BYTES)]))
