"""Runs in a subprocess (the SDK's protobuf modules cannot share a process with ours): the
official SDK's clients drive the control-plane RPCs of issue 14 against a gateway.

Prints one line per step, ``step <name> <json>``, so the test can tell how far it got and
check what each answer carried.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import grpc
from openshell import SandboxClient, SandboxTemplateClient
from openshell._proto import datamodel_pb2, openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from openshell.errors import GatewayError, _error_mapping_channel

WS = "default"


def step(name: str, value: Any) -> None:
    print("step", name, json.dumps(value, sort_keys=True), flush=True)


def code_of(call: Any) -> str:
    try:
        call()
    except GatewayError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


def gateway_config(stub: Any) -> None:
    response = stub.GetGatewayConfig(sandbox_pb2.GetGatewayConfigRequest(), timeout=30)
    step(
        "gateway-config",
        {
            "revision": response.settings_revision,
            "keys": sorted(response.settings),
            "dummy_int": response.settings["dummy_int"].int_value,
        },
    )


def templates(client: SandboxClient, stub: Any) -> None:
    tpls = SandboxTemplateClient.from_sandbox_client(client)
    made = tpls.create(
        workspace=WS, name="base", image="ghcr.io/example/base:1", environment={"A": "1"},
        cpu="2", memory="1Gi", labels={"team": "x"},
    )  # fmt: skip
    step("template-created", {"name": made.metadata.name, "rv": made.metadata.resource_version})
    step("template-duplicate", code_of(lambda: tpls.create(workspace=WS, name="base")))
    got = tpls.get("base", workspace=WS)
    step("template-got", {"image": got.spec.workload.image, "cpu": got.spec.workload.resources.cpu})
    listed = tpls.list_all(workspace=WS, label_selector="team=x")
    step("template-listed", [t.metadata.name for t in listed])
    ref = client.create_from_template(workspace=WS, workload_template="base", name="fromtpl")
    provenance = ref.created_from_workload_template
    assert provenance is not None
    stored = stub.GetSandbox(openshell_pb2.GetSandboxRequest(name="fromtpl"), timeout=30).sandbox
    step(
        "sandbox-from-template",
        {
            "image": stored.spec.template.image,
            "env": dict(stored.spec.environment),
            "template": provenance.name,
            "template_rv": provenance.resource_version,
        },
    )
    step("template-in-use", code_of(lambda: tpls.delete("base", workspace=WS)))
    client.delete("fromtpl", workspace=WS)
    client.wait_deleted("fromtpl", workspace=WS, timeout_seconds=60)
    step("template-deleted", tpls.delete("base", workspace=WS).outcome.name)
    absent = tpls.delete("base", workspace=WS, allow_missing=True)
    step("template-absent", absent.outcome.name)


def services(client: SandboxClient, stub: Any) -> None:
    """The SDK has no service client of its own: its generated stub on its own transport."""
    client.create(workspace=WS, name="svc")
    made = stub.ExposeService(
        openshell_pb2.ExposeServiceRequest(sandbox="svc", name="web", target_port=8080), timeout=30
    )
    moved = stub.ExposeService(
        openshell_pb2.ExposeServiceRequest(sandbox="svc", name="web", target_port=9090), timeout=30
    )
    step(
        "service-exposed",
        {
            "key": made.endpoint.metadata.name,
            "rv": [
                made.endpoint.metadata.resource_version,
                moved.endpoint.metadata.resource_version,
            ],
            "port": moved.endpoint.target_port,
        },
    )
    got = stub.GetService(openshell_pb2.GetServiceRequest(sandbox="svc", name="web"), timeout=30)
    listed = stub.ListServices(openshell_pb2.ListServicesRequest(sandbox="svc"), timeout=30)
    step("service-read", {"port": got.endpoint.target_port, "listed": len(listed.services)})
    bad = openshell_pb2.ExposeServiceRequest(sandbox="svc", name="a--b", target_port=1)
    step("service-invalid", code_of(lambda: stub.ExposeService(bad, timeout=30)))
    client.delete("svc", workspace=WS)
    client.wait_deleted("svc", workspace=WS, timeout_seconds=60)
    left = -1
    for _ in range(100):  # the cascade follows the sandbox row's removal
        left = len(stub.ListServices(openshell_pb2.ListServicesRequest(), timeout=30).services)
        if left == 0:
            break
        time.sleep(0.1)
    step("service-after-sandbox-delete", left)


def profiles(stub: Any) -> None:
    """The SDK has no profile client: its generated stub on its own transport."""
    profile = openshell_pb2.ProviderProfile(id="acme", display_name="Acme")
    profile.credentials.add(name="token", env_vars=["ACME_TOKEN"])
    item = openshell_pb2.ProviderProfileImportItem(profile=profile, source="acme.yaml")
    lint = stub.LintProviderProfiles(
        openshell_pb2.LintProviderProfilesRequest(profiles=[item]), timeout=30
    )
    imported = stub.ImportProviderProfiles(
        openshell_pb2.ImportProviderProfilesRequest(profiles=[item]), timeout=30
    )
    listed = stub.ListProviderProfiles(openshell_pb2.ListProviderProfilesRequest(), timeout=30)
    step(
        "profiles",
        {
            "lint": lint.valid,
            "imported": imported.imported,
            "listed": [p.id for p in listed.profiles],
        },
    )
    profile.description = "v2"
    profile.resource_version = imported.profiles[0].resource_version
    updated = stub.UpdateProviderProfiles(
        openshell_pb2.UpdateProviderProfilesRequest(
            id="acme", profile=openshell_pb2.ProviderProfileImportItem(profile=profile)
        ),
        timeout=30,
    )
    got = stub.GetProviderProfile(openshell_pb2.GetProviderProfileRequest(id="acme"), timeout=30)
    step(
        "profile-updated", {"rv": updated.profile.resource_version, "desc": got.profile.description}
    )
    provider = datamodel_pb2.Provider(type="acme", credentials={"ACME_TOKEN": "t"})
    provider.metadata.name = "acme-one"
    stub.CreateProvider(openshell_pb2.CreateProviderRequest(provider=provider), timeout=30)
    delete = openshell_pb2.DeleteProviderProfileRequest(id="acme")
    step("profile-in-use", code_of(lambda: stub.DeleteProviderProfile(delete, timeout=30)))
    stub.DeleteProvider(openshell_pb2.DeleteProviderRequest(name="acme-one"), timeout=30)
    step("profile-deleted", stub.DeleteProviderProfile(delete, timeout=30).outcome)


def credentials(client: SandboxClient, stub: Any) -> None:
    """The SDK's ProviderClient for credentials; its stub for the refresh RPCs."""
    provider = datamodel_pb2.Provider(type="github", credentials={"GITHUB_TOKEN": "tok-123"})
    provider.metadata.name = "creds"
    stub.CreateProvider(openshell_pb2.CreateProviderRequest(provider=provider), timeout=30)
    values = client.providers().get_credentials("creds", ["GITHUB_TOKEN"], workspace=WS)
    step("credentials", {k: v.value for k, v in values.items()})
    configure = openshell_pb2.ConfigureProviderRefreshRequest(
        provider="creds",
        credential_key="GITHUB_TOKEN",
        strategy=openshell_pb2.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_EXTERNAL,
        material={"hint": "m"},
    )
    configured = stub.ConfigureProviderRefresh(configure, timeout=30).status
    rotate = openshell_pb2.RotateProviderCredentialRequest(
        provider="creds", credential_key="GITHUB_TOKEN", request_id="once"
    )
    stub.RotateProviderCredential(rotate, timeout=30)
    rotated = stub.RotateProviderCredential(rotate, timeout=30).status
    status = stub.GetProviderRefreshStatus(
        openshell_pb2.GetProviderRefreshStatusRequest(provider="creds"), timeout=30
    )
    deleted = stub.DeleteProviderRefresh(
        openshell_pb2.DeleteProviderRefreshRequest(provider="creds", credential_key="GITHUB_TOKEN"),
        timeout=30,
    )
    step(
        "refresh",
        {
            "configured": configured.status,
            "rotated": rotated.status,
            "listed": [s.credential_key for s in status.credentials],
            "deleted": deleted.outcome,
        },
    )
    client.create(
        workspace=WS, name="withprov", spec=openshell_pb2.SandboxSpec(providers=["creds"])
    )
    readiness = stub.GetSandboxProviderStatus(
        openshell_pb2.GetSandboxProviderStatusRequest(sandbox="withprov", provider="creds"),
        timeout=30,
    ).status
    step("provider-status", {"state": readiness.state, "provider": readiness.receipt.provider})


def main() -> None:
    address = sys.argv[1]
    channel = _error_mapping_channel(grpc.insecure_channel(address))
    stub = openshell_pb2_grpc.OpenShellStub(channel)
    with SandboxClient(address, timeout=30) as client:
        gateway_config(stub)
        templates(client, stub)
        services(client, stub)
        profiles(stub)
        credentials(client, stub)
    print("done", flush=True)


if __name__ == "__main__":
    main()
