"""Custom provider profile rows, and the profile side of the guard that no provider uses a
profile that was deleted.

A row per profile: its name is the profile id (unique per workspace), its payload the
``ProviderProfile``; the profile's ``resource_version`` is the row's. Imports are
``MUST_CREATE``, updates are CAS at the version the client sent.

DeleteProviderProfile meets CreateProvider the way DeleteProvider meets an attach: a provider
created with a type that names a custom profile is written first, *then* the profile is
fenced (re-written unchanged at the version read, so its version moves). The delete reads
the profile's version, scans the workspace's providers for one of that type, and deletes at
the version read *before* the scan. A provider written after that read was fenced after it
was written, so the delete fails, scans again and refuses; one written before is found by
the scan. A fence that finds the profile gone raises ``ProfileMissing`` and the create takes
its provider back out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store.base import Store
from shellgate.store.errors import Conflict, NotFound, StoreError
from shellgate.store.records import ObjectRecord, WriteCondition
from shellgate.store.repositories.hooks import Hook, no_hook

Profile = openshell_pb2.ProviderProfile
PROFILE_TYPE = "provider_profile"
SCAN_PAGE = 1000


class ProfileMissing(StoreError):
    def __init__(self, profile_id: str) -> None:
        super().__init__(f"provider profile {profile_id!r} not found")
        self.profile_id = profile_id


class ProfileInUse(StoreError):
    def __init__(self, profile_id: str, providers: Sequence[str]) -> None:
        shown = ", ".join(sorted(providers)[:10])
        super().__init__(f"provider profile {profile_id!r} is in use by providers: {shown}")
        self.profile_id = profile_id
        self.providers = list(providers)


def _decode(record: ObjectRecord) -> Profile:
    profile = Profile.FromString(record.payload)
    profile.resource_version = record.resource_version
    return profile


def _payload(profile: Profile) -> bytes:
    stored = Profile()
    stored.CopyFrom(profile)
    stored.resource_version = 0  # the row's column is the truth
    return stored.SerializeToString(deterministic=True)


@dataclass
class ProfileHooks:
    before_user_write: Hook = no_hook
    """CreateProvider found the custom profile its type names and inserts the provider next."""
    after_reference_scan: Hook = no_hook
    """DeleteProviderProfile read the version and found no provider of the type; it deletes
    next."""


class ProfileRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = ProfileHooks()

    async def find(self, profile_id: str, workspace: str) -> Profile | None:
        record = await self.store.get_by_name(PROFILE_TYPE, profile_id, workspace)
        return None if record is None else _decode(record)

    async def is_custom(self, profile_id: str, workspace: str) -> bool:
        """Whether a provider of type ``profile_id`` is about to use a custom profile (which
        it must then fence after its insert)."""
        found = await self.store.get_by_name(PROFILE_TYPE, profile_id, workspace) is not None
        if found:
            await self.hooks.before_user_write(profile_id)
        return found

    async def list_all(self, workspace: str) -> list[Profile]:
        profiles: list[Profile] = []
        token = ""
        while True:
            page = await self.store.list(
                PROFILE_TYPE, workspace=workspace, limit=SCAN_PAGE, page_token=token
            )
            profiles += [_decode(r) for r in page.records]
            token = page.next_page_token
            if not token:
                return sorted(profiles, key=lambda p: p.id)

    async def create(self, profile: Profile, workspace: str) -> Profile:
        """``MUST_CREATE``: an id taken in the workspace is ``UniqueViolation``."""
        result = await self.store.put_if(
            PROFILE_TYPE,
            str(uuid.uuid4()),
            profile.id,
            _payload(profile),
            {},
            WriteCondition.MUST_CREATE,
            workspace,
        )
        created = Profile()
        created.CopyFrom(profile)
        created.resource_version = result.resource_version
        return created

    async def remove(self, profile: Profile, workspace: str) -> None:
        """Undo an import's create (version-bound; a row changed since is left alone)."""
        record = await self.store.get_by_name(PROFILE_TYPE, profile.id, workspace)
        if record is not None and record.resource_version == profile.resource_version:
            await self.store.delete_if(PROFILE_TYPE, record.id, record.resource_version)

    async def update(self, profile: Profile, workspace: str, expected_version: int) -> Profile:
        """Replace the profile at ``expected_version`` (one attempt): ``Conflict`` when the
        row moved, ``ProfileMissing`` when there is none."""
        record = await self.store.get_by_name(PROFILE_TYPE, profile.id, workspace)
        if record is None:
            raise ProfileMissing(profile.id)
        try:
            result = await self.store.put_if(
                PROFILE_TYPE,
                record.id,
                record.name,
                _payload(profile),
                None,
                WriteCondition.match(expected_version),
                workspace,
            )
        except NotFound:
            raise ProfileMissing(profile.id) from None
        updated = Profile()
        updated.CopyFrom(profile)
        updated.resource_version = result.resource_version
        return updated

    async def fence(self, name: str, workspace: str) -> None:
        """Move the profile's version on, proving it still exists after a provider of its type was
        written. ``ProfileMissing`` when it is gone.

        The same one-statement fence as a provider's (``ProviderRepository.fence``): it is
        conditioned on the row's existence, not on a version read before, so concurrent
        fences of one profile never conflict with each other; the delete only needs the
        version to have moved after the reference was written."""
        if not await self._write_fence(name, workspace):
            raise ProfileMissing(name)
        self.store.observer.cas_attempt(PROFILE_TYPE, "written")

    async def _write_fence(self, name: str, workspace: str) -> bool:
        """The fence itself: the profile's version, moved on; False when it is gone."""
        return await self.store.touch_by_name(PROFILE_TYPE, name, workspace) is not None

    async def delete_unused(self, profile_id: str, workspace: str) -> bool:
        """Delete the profile unless a provider uses it; False when there is none.
        ``ProfileInUse`` names the providers; Conflict when every attempt lost."""

        async def attempt() -> bool:
            record = await self.store.get_by_name(PROFILE_TYPE, profile_id, workspace)
            if record is None:
                self.store.observer.cas_attempt(PROFILE_TYPE, "noop")
                return False
            users = await self.providers_of_type(profile_id, workspace)
            if users:
                raise ProfileInUse(profile_id, users)
            await self.hooks.after_reference_scan(record.id)
            if not await self._delete_at_version_read(record):
                raise Conflict(None)
            self.store.observer.cas_attempt(PROFILE_TYPE, "written")
            return True

        return await self.store.retry_on_conflict(attempt, object_type=PROFILE_TYPE)

    async def _delete_at_version_read(self, record: ObjectRecord) -> bool:
        return await self.store.delete_if(PROFILE_TYPE, record.id, record.resource_version)

    async def providers_of_type(self, profile_id: str, workspace: str) -> list[str]:
        users: list[str] = []
        token = ""
        while True:
            page, token = await self.store.list_messages(
                datamodel_pb2.Provider, workspace=workspace, limit=SCAN_PAGE, page_token=token
            )
            # a provider's type names its profile trimmed and case-insensitively
            users += [p.metadata.name for p in page if p.type.strip().lower() == profile_id]
            if not token:
                return users
