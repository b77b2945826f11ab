"""Errors the repositories' protocols raise; the controller maps them to API statuses."""

from __future__ import annotations

from collections.abc import Sequence

from shellgate.store.errors import StoreError, UniqueViolation


class VersionTaken(UniqueViolation):
    """Another writer inserted the version this insert wanted (the version index refused it).

    The writer lost a race: it reads the latest version again, rebuilds and inserts again.
    """


class ProviderMissing(StoreError):
    """A sandbox was to reference a provider that does not exist (any more)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"provider {name!r} not found")
        self.name = name


class ProviderInUse(StoreError):
    """DeleteProvider found sandboxes that reference the provider."""

    def __init__(self, name: str, sandboxes: Sequence[str]) -> None:
        shown = ", ".join(sorted(sandboxes)[:10])
        super().__init__(f"provider {name!r} is attached to sandboxes: {shown}")
        self.name = name
        self.sandboxes = list(sandboxes)


class WorkspaceMissing(StoreError):
    """A row was to be written into a workspace that does not exist (any more)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workspace {name!r} not found")
        self.name = name


class WorkspaceTerminating(StoreError):
    """A row was to be written into a workspace that is being deleted."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workspace {name!r} is being deleted")
        self.name = name


class WorkspaceNotEmpty(StoreError):
    """DeleteWorkspace found sandboxes or providers still in the workspace."""

    def __init__(self, name: str, kinds: Sequence[str]) -> None:
        super().__init__(f"workspace {name!r} still contains: {', '.join(kinds)}")
        self.name = name
        self.kinds = list(kinds)


class TemplateMissing(StoreError):
    """A sandbox was to be built from a template that does not exist (any more)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"sandbox template {name!r} not found")
        self.name = name


class TemplateInUse(StoreError):
    """DeleteSandboxTemplate found sandboxes built from the template."""

    def __init__(self, name: str, sandboxes: Sequence[str]) -> None:
        shown = ", ".join(sorted(sandboxes)[:10])
        super().__init__(f"sandbox template {name!r} is in use by sandboxes: {shown}")
        self.name = name
        self.sandboxes = list(sandboxes)
