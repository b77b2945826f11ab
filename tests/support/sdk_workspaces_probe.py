"""Runs in a subprocess (the SDK's protobuf modules cannot share a process with ours).

ARGV[1] is a scenario, ARGV[2] its JSON input. Prints one JSON object: what the official SDK
saw at each step (values, or the status code name of a GatewayError), for the test to judge.

``oidc``: {"endpoint", "ca", "admin_token", "user_token", "user_subject"}. The admin manages
workspaces with ``WorkspaceClient`` and makes the user a member of ``team-a``; the user then
works in its workspace and tries the other and the cross-workspace listing.

``active``: {"client_secret"?} — ``SandboxClient.from_active_cluster()`` with the gateway
the HOME the test prepared names (with ``client_secret``: a ``ClientCredentialsAuth`` whose
issuer and client id come from that gateway's metadata); answers who the gateway says the
caller is and lists ``default``.

``client_credentials``: {"endpoint", "ca", "issuer", "client_id", "secrets"} — for each
secret, ``SandboxClient(client_credentials=ClientCredentialsAuth(...))`` asks who it is:
the answer, or the SandboxError the SDK raised when the issuer refused the exchange.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openshell import (
    ClientCredentialsAuth,
    SandboxClient,
    SandboxError,
    TlsConfig,
    WorkspaceClient,
)
from openshell._proto import openshell_pb2
from openshell.errors import GatewayError

OWN, OTHER = "team-a", "team-b"


def outcome(step: Callable[[], Any]) -> Any:
    """The step's value, or the status code name it failed with."""
    try:
        return step()
    except GatewayError as error:
        return str(error.code().name)


def whoami(client: SandboxClient) -> dict[str, Any]:
    me = client._stub.GetCurrentUser(openshell_pb2.GetCurrentUserRequest(), timeout=10)
    return {
        "subject": me.subject,
        "display_name": me.display_name,
        "roles": sorted(me.roles),
        "scopes": sorted(me.scopes),
        "provider": me.identity_provider,
    }


def auth_modes(client: SandboxClient) -> list[str]:
    info = client._stub.GetGatewayInfo(openshell_pb2.GetGatewayInfoRequest(), timeout=10)
    return [mode for ext in info.extensions for mode in ext.supported_capabilities]


def add_member(client: SandboxClient, workspace: str, subject: str) -> str:
    client._stub.AddWorkspaceMember(
        openshell_pb2.AddWorkspaceMemberRequest(
            workspace_scope={"workspace": workspace},
            principal_subject=subject,
            role=openshell_pb2.WORKSPACE_ROLE_USER,
        ),
        timeout=10,
    )
    return "OK"


def oidc(spec: dict[str, str]) -> dict[str, Any]:
    tls = TlsConfig(ca_path=Path(spec["ca"]))
    seen: dict[str, Any] = {}
    with (
        SandboxClient(spec["endpoint"], tls=tls, bearer_token=spec["admin_token"]) as admin,
        SandboxClient(spec["endpoint"], tls=tls, bearer_token=spec["user_token"]) as user,
    ):
        workspaces = WorkspaceClient.from_sandbox_client(admin)
        seen["created"] = [workspaces.create(name).name for name in (OWN, OTHER, "scratch")]
        got = workspaces.get(OWN)
        seen["got"] = [got.name, got.phase]
        seen["listed"] = sorted(w.name for w in workspaces.list_all())
        seen["deleted"] = workspaces.delete("scratch").outcome.name
        seen["get deleted"] = outcome(lambda: workspaces.get("scratch"))
        seen["add member"] = add_member(admin, OWN, spec["user_subject"])
        seen["user lists workspaces"] = outcome(
            lambda: [w.name for w in WorkspaceClient.from_sandbox_client(user).list_all()]
        )
        seen["user creates in own"] = outcome(lambda: user.create(workspace=OWN, name="mine").name)
        seen["user creates in other"] = outcome(lambda: user.create(workspace=OTHER, name="x"))
        seen["user lists own"] = outcome(lambda: [s.name for s in user.list_all(workspace=OWN)])
        seen["user lists all workspaces"] = outcome(
            lambda: [s.name for s in user.list_all_for_all_workspaces()]
        )
        seen["admin lists all workspaces"] = outcome(
            lambda: sorted(s.name for s in admin.list_all_for_all_workspaces())
        )
        seen["user creates workspace"] = outcome(
            lambda: WorkspaceClient.from_sandbox_client(user).create("mine")
        )
        seen["whoami"] = whoami(user)
        seen["auth modes"] = auth_modes(admin)
        seen["user asks gateway info"] = outcome(lambda: auth_modes(user))
        seen["delete non-empty"] = outcome(lambda: workspaces.delete(OWN).outcome.name)
        user.delete("mine", workspace=OWN)
        user.wait_deleted("mine", workspace=OWN, timeout_seconds=60)
        seen["delete emptied"] = workspaces.delete(OWN).outcome.name
    return seen


def active(spec: dict[str, str]) -> dict[str, Any]:
    credentials = None
    if "client_secret" in spec:
        credentials = ClientCredentialsAuth(client_secret=spec["client_secret"])
    with SandboxClient.from_active_cluster(timeout=10, client_credentials=credentials) as client:
        return {
            "whoami": whoami(client),
            "listed": outcome(lambda: [s.name for s in client.list_all(workspace="default")]),
        }


def service_account(spec: dict[str, Any]) -> list[Any]:
    answers: list[Any] = []
    for secret in spec["secrets"]:
        auth = ClientCredentialsAuth(
            issuer=spec["issuer"],
            client_id=spec["client_id"],
            client_secret=secret,
            scopes=["sandbox:read"],
        )
        tls = TlsConfig(ca_path=Path(spec["ca"]))
        with SandboxClient(spec["endpoint"], tls=tls, client_credentials=auth) as client:
            try:
                answers.append(whoami(client))
            except SandboxError as error:
                answers.append(f"SandboxError: {error}")
    return answers


def main() -> None:
    scenario, spec = sys.argv[1], json.loads(sys.argv[2])
    run: Callable[[Any], Any]
    run = {"oidc": oidc, "active": active, "client_credentials": service_account}[scenario]
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
