"""Provider profile RPCs: List, Get, Import, Update, Lint and DeleteProviderProfile.

Built-in profiles (``reconcilers.profiles.BUILTIN_PROFILES``) come first and cannot be
changed; custom ones are rows of the profile repository. Lint validates and stores nothing;
Import stores every profile of the request or none (``MUST_CREATE`` each, the ones made
removed again if a later one loses a race); Update is CAS at the version the client sent.
DeleteProviderProfile is refused while a provider uses the profile, fenced against a
concurrent CreateProvider (see the profile repository).
"""

from __future__ import annotations

import grpc

from shellgate.api import openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import RequestError, not_found
from shellgate.controller.service.requests import one_listed_workspace, single_workspace
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.profiles import (
    BUILTIN_PROFILES,
    BUILTIN_SOURCE,
    Candidate,
    Diagnostic,
    already_exists,
    candidates,
    has_errors,
    id_problem,
    lint_set,
)
from shellgate.reconcilers.validation import effective_page_size
from shellgate.store import UniqueViolation
from shellgate.store.paging import decode_offset_token, encode_offset_token
from shellgate.store.repositories import PROFILE_TYPE

P = openshell_pb2
Profile = P.ProviderProfile


def _require_id(profile_id: str) -> str:
    problem = id_problem(profile_id)
    if problem is not None:
        raise InvalidArgument.single("id", problem)
    return profile_id


async def list_provider_profiles(
    gw: Gateway, request: P.ListProviderProfilesRequest
) -> P.ListProviderProfilesResponse:
    """Built-in profiles, then the workspace's custom ones by id; paged by offset."""
    workspace = one_listed_workspace(request.workspace_scope, "ListProviderProfiles")
    everything = [*BUILTIN_PROFILES.values(), *await gw.repos.profiles.list_all(workspace)]
    start = decode_offset_token(request.page_token)
    size = effective_page_size(request.page_size)
    page = everything[start : start + size]
    token = encode_offset_token(start + size) if start + size < len(everything) else ""
    return P.ListProviderProfilesResponse(profiles=page, next_page_token=token)


async def get_provider_profile(
    gw: Gateway, request: P.GetProviderProfileRequest
) -> P.ProviderProfileResponse:
    profile_id = _require_id(request.id)
    builtin = BUILTIN_PROFILES.get(profile_id)
    found = builtin or await gw.repos.profiles.find(
        profile_id, single_workspace(request.workspace_scope)
    )
    if found is None:
        raise not_found(PROFILE_TYPE, profile_id)
    return P.ProviderProfileResponse(profile=found)


async def _conflicts(gw: Gateway, found: list[Candidate], workspace: str) -> list[Diagnostic]:
    return [
        already_exists(c) for c in found if await gw.repos.profiles.find(c.profile.id, workspace)
    ]


async def lint_provider_profiles(
    gw: Gateway, request: P.LintProviderProfilesRequest
) -> P.LintProviderProfilesResponse:
    """What Import would say, without storing anything."""
    workspace = single_workspace(request.workspace_scope)
    found, diagnostics = candidates(request.profiles)
    diagnostics += lint_set(found)
    diagnostics += await _conflicts(gw, found, workspace)
    return P.LintProviderProfilesResponse(
        diagnostics=diagnostics, valid=not has_errors(diagnostics)
    )


async def import_provider_profiles(
    gw: Gateway, request: P.ImportProviderProfilesRequest
) -> P.ImportProviderProfilesResponse:
    workspace = single_workspace(request.workspace_scope)
    found, diagnostics = candidates(request.profiles)
    diagnostics += lint_set(found)
    diagnostics += await _conflicts(gw, found, workspace)
    if has_errors(diagnostics):
        return P.ImportProviderProfilesResponse(diagnostics=diagnostics, imported=False)
    made: list[Profile] = []
    for candidate in found:
        try:
            made.append(await gw.repos.profiles.create(candidate.profile, workspace))
        except UniqueViolation:  # imported meanwhile by another call: none of ours stays
            for profile in made:
                await gw.repos.profiles.remove(profile, workspace)
            return P.ImportProviderProfilesResponse(
                diagnostics=[*diagnostics, already_exists(candidate)], imported=False
            )
    return P.ImportProviderProfilesResponse(diagnostics=diagnostics, profiles=made, imported=True)


async def update_provider_profiles(
    gw: Gateway, request: P.UpdateProviderProfilesRequest
) -> P.UpdateProviderProfilesResponse:
    """Replace a custom profile at the version the client read (``expected_resource_version``
    or the profile's own ``resource_version``; one of them is required)."""
    workspace = single_workspace(request.workspace_scope)
    target = _require_id(request.id)
    if target in BUILTIN_PROFILES:
        raise FailedPrecondition(
            f"provider profile {target!r} is managed by source {BUILTIN_SOURCE!r} "
            "and cannot be changed",
            "PROFILE_BUILTIN",
        )
    found, diagnostics = candidates([request.profile] if request.HasField("profile") else [])
    diagnostics += lint_set(found)
    expected = request.expected_resource_version or (
        request.profile.profile.resource_version if request.HasField("profile") else 0
    )
    for candidate in found:
        if candidate.profile.id != target:
            diagnostics.append(
                Diagnostic(source=candidate.source, profile_id=candidate.profile.id, field="id",
                           message=f"profile id does not match {target!r}", severity="error")
            )  # fmt: skip
    if not expected and found:
        diagnostics.append(
            Diagnostic(source=found[0].source, profile_id=target, field="resource_version",
                       message="custom provider profile update requires a non-zero "
                       "resource_version; export the current profile before editing it",
                       severity="error")
        )  # fmt: skip
    if has_errors(diagnostics):
        return P.UpdateProviderProfilesResponse(diagnostics=diagnostics, updated=False)
    current = await gw.repos.profiles.find(target, workspace)
    if current is None:
        raise not_found(PROFILE_TYPE, target)
    updated = await gw.repos.profiles.update(found[0].profile, workspace, expected)
    return P.UpdateProviderProfilesResponse(profile=updated, updated=True)


async def delete_provider_profile(
    gw: Gateway, request: P.DeleteProviderProfileRequest
) -> P.DeleteProviderProfileResponse:
    profile_id = _require_id(request.id)
    if profile_id in BUILTIN_PROFILES:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"provider profile {profile_id!r} is managed by source {BUILTIN_SOURCE!r} "
            "and cannot be deleted",
        )
    workspace = single_workspace(request.workspace_scope)
    if await gw.repos.profiles.delete_unused(profile_id, workspace):
        return P.DeleteProviderProfileResponse(outcome=P.DELETION_OUTCOME_COMPLETED)
    if request.allow_missing:
        return P.DeleteProviderProfileResponse(outcome=P.DELETION_OUTCOME_ALREADY_ABSENT)
    raise not_found(PROFILE_TYPE, profile_id)
