"""``shellgate rotate-key``: re-seal every provider's credentials under a new key.

Rotation while replicas run: first add the new key to every replica's key file as its
*second* line and restart them (they open values under either key and still seal with the
old one); run ``rotate-key`` (it opens with the current keys and seals with the new one,
row by row, each a CAS, so a racing update is retried and nothing acknowledged is lost);
then make the new key the first line everywhere and, once no row is left under the old key
(``rotate-key`` reports 0 re-sealed), remove the old key. A rotation that stops half-way
simply runs again: rows already under the new key are left as they are.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from shellgate.controller.app.options import DEFAULT_DATABASE_URL, env_default
from shellgate.store import NotFound, Repositories, StoreError, connect
from shellgate.store.secrets import Keyring, SecretError, SecretSealer

PAGE_SIZE = 500
log = logging.getLogger(__name__)


def add_command(commands: Any) -> None:
    rotate = commands.add_parser(
        "rotate-key",
        help="re-seal every provider's credentials under a new key",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "--database-url",
        default=env_default("SHELLGATE_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="database URL (SHELLGATE_DATABASE_URL); default %(default)s",
    )
    rotate.add_argument(
        "--encryption-key-file",
        default=env_default("SHELLGATE_ENCRYPTION_KEY_FILE", ""),
        required=not env_default("SHELLGATE_ENCRYPTION_KEY_FILE", ""),
        help="the keys the credentials are sealed with now (SHELLGATE_ENCRYPTION_KEY_FILE)",
    )
    rotate.add_argument("--new-key-file", required=True, help="the key to seal with from now on")


async def rotate_key(args: argparse.Namespace) -> int:
    current = Keyring.from_file(args.encryption_key_file)
    new = Keyring.from_file(args.new_key_file).active
    sealer = SecretSealer(current.with_active(new.key))
    store = await connect(args.database_url)
    try:
        seen, resealed = await reseal_all(Repositories(store, sealer))
    finally:
        await store.close()
    print(f"re-sealed {resealed} of {seen} providers under key {new.kid}")
    return 0


async def reseal_all(repos: Repositories) -> tuple[int, int]:
    """Every provider of every workspace, re-sealed by CAS; (seen, written).

    Rows written before credentials were sealed are sealed too. A row that cannot be opened
    with the keys given is reported and skipped, so the others are still rotated; then
    ``UnopenedRows`` says which, and the command fails.
    """
    seen = resealed = 0
    unopened: list[str] = []
    token = ""
    while True:
        page, token = await repos.providers.list_page(
            workspace=None, limit=PAGE_SIZE, page_token=token
        )
        for provider in page:
            seen += 1
            try:
                resealed += await repos.providers.reseal(provider.metadata.id)
            except NotFound:
                continue  # deleted since the listing
            except SecretError as exc:
                log.error("provider %s not re-sealed: %s", provider.metadata.name, exc)
                unopened.append(provider.metadata.name)
        if not token:
            break
    if unopened:
        raise UnopenedRows(seen, resealed, unopened)
    return seen, resealed


class UnopenedRows(StoreError):
    def __init__(self, seen: int, resealed: int, names: list[str]) -> None:
        super().__init__(
            f"re-sealed {resealed} of {seen} providers; {len(names)} could not be opened with "
            f"the keys given (add the key they were sealed under to --encryption-key-file): "
            + ", ".join(names[:20])
        )
