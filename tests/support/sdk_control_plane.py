"""Runs in a subprocess (the SDK's protobuf modules cannot share a process with ours): the
official SDK's clients drive the control-plane RPCs of issue 14 against a gateway.

Prints one line per step, ``step <name> <json>``, so the test can tell how far it got and
check what each answer carried.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from openshell import SandboxClient, SandboxTemplateClient
from openshell._proto import openshell_pb2, openshell_pb2_grpc, sandbox_pb2
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


def main() -> None:
    address = sys.argv[1]
    channel = _error_mapping_channel(grpc.insecure_channel(address))
    stub = openshell_pb2_grpc.OpenShellStub(channel)
    with SandboxClient(address, timeout=30) as client:
        gateway_config(stub)
        templates(client, stub)
    print("done", flush=True)


if __name__ == "__main__":
    main()
