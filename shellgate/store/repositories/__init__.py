"""Typed repositories: one per kind of row, each over a ``Store``.

A repository owns what the controller must not spell out itself: the object type string and
the message type registered under it, the stored encoding of its rows, and the multi-row
protocols (the provider fence and DeleteProvider's version-bound check, the attach and its
undo, the cascade removal of a sandbox, the revision insert at n+1, the workspace fence).
Domain decisions stay in ``reconcilers/``: the controller passes mutations and plans in.
Every loop that can lose a race goes through ``Store.retry_on_conflict``. Each repository's
``hooks`` are named points where a test may pause a protocol to force an interleaving.
"""

from __future__ import annotations

from shellgate.store.base import Store
from shellgate.store.repositories.chunks import CHUNK_TYPE, ChunkRepository, StoredDraftChunk
from shellgate.store.repositories.errors import (
    ProviderInUse,
    ProviderMissing,
    TemplateInUse,
    TemplateMissing,
    VersionTaken,
    WorkspaceMissing,
    WorkspaceNotEmpty,
    WorkspaceTerminating,
)
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.profiles import (
    PROFILE_TYPE,
    ProfileInUse,
    ProfileMissing,
    ProfileRepository,
)
from shellgate.store.repositories.providers import PROVIDER_TYPE, Provider, ProviderRepository
from shellgate.store.repositories.refresh import (
    REFRESH_TYPE,
    ROTATION_TYPE,
    RefreshRepository,
)
from shellgate.store.repositories.replicas import REPLICA_TYPE, ReplicaRepository
from shellgate.store.repositories.revisions import (
    REVISION_TYPE,
    RevisionRepository,
    StoredPolicyRevision,
)
from shellgate.store.repositories.sandboxes import SANDBOX_TYPE, Sandbox, SandboxRepository
from shellgate.store.repositories.services import (
    SERVICE_TYPE,
    ServiceEndpoint,
    ServiceRepository,
)
from shellgate.store.repositories.settings import (
    GATEWAY_SETTINGS_TYPE,
    SANDBOX_SETTINGS_TYPE,
    GatewaySettings,
    SandboxSettings,
    SettingsRepository,
    sandbox_settings_id,
)
from shellgate.store.repositories.templates import (
    TEMPLATE_TYPE,
    SandboxWorkloadTemplate,
    TemplateRepository,
)
from shellgate.store.repositories.workspaces import (
    MEMBER_TYPE,
    WORKSPACE_TYPE,
    Workspace,
    WorkspaceMember,
    WorkspaceRepository,
)
from shellgate.store.secrets import SecretSealer


class Repositories:
    """Every repository over one store, wired together (a sandbox's removal removes the
    rows the other repositories hold for it)."""

    def __init__(self, store: Store, sealer: SecretSealer) -> None:
        self.store = store
        self.settings = SettingsRepository(store)
        self.revisions = RevisionRepository(store)
        self.chunks = ChunkRepository(store)
        self.providers = ProviderRepository(store, sealer)
        self.replicas = ReplicaRepository(store)
        self.workspaces = WorkspaceRepository(store)
        self.templates = TemplateRepository(store)
        self.services = ServiceRepository(store)
        self.profiles = ProfileRepository(store)
        self.refresh = RefreshRepository(store, sealer)
        self.sandboxes = SandboxRepository(
            store,
            self.providers,
            owned=(self.settings, self.revisions, self.chunks, self.services),
            templates=self.templates,
        )


__all__ = [
    "CHUNK_TYPE",
    "GATEWAY_SETTINGS_TYPE",
    "MEMBER_TYPE",
    "PROFILE_TYPE",
    "PROVIDER_TYPE",
    "REFRESH_TYPE",
    "REPLICA_TYPE",
    "REVISION_TYPE",
    "ROTATION_TYPE",
    "SANDBOX_SETTINGS_TYPE",
    "SANDBOX_TYPE",
    "SERVICE_TYPE",
    "TEMPLATE_TYPE",
    "WORKSPACE_TYPE",
    "ChunkRepository",
    "GatewaySettings",
    "Hook",
    "ProfileInUse",
    "ProfileMissing",
    "ProfileRepository",
    "Provider",
    "ProviderInUse",
    "ProviderMissing",
    "ProviderRepository",
    "RefreshRepository",
    "ReplicaRepository",
    "Repositories",
    "RevisionRepository",
    "Sandbox",
    "SandboxRepository",
    "SandboxSettings",
    "SandboxWorkloadTemplate",
    "ServiceEndpoint",
    "ServiceRepository",
    "SettingsRepository",
    "StoredDraftChunk",
    "StoredPolicyRevision",
    "TemplateInUse",
    "TemplateMissing",
    "TemplateRepository",
    "VersionTaken",
    "Workspace",
    "WorkspaceMember",
    "WorkspaceMissing",
    "WorkspaceNotEmpty",
    "WorkspaceRepository",
    "WorkspaceTerminating",
    "no_hook",
    "sandbox_settings_id",
]
