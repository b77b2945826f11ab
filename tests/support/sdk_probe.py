"""Runs in a subprocess (the SDK's protobuf modules cannot share a process with ours):
call the gateway at ARGV[1] with the official SDK and print what GatewayError decoded."""

from __future__ import annotations

import json
import sys

import grpc
from openshell import SandboxClient
from openshell._proto import openshell_pb2, openshell_pb2_grpc
from openshell.errors import GatewayError, _error_mapping_channel


def decoded(call) -> dict:
    try:
        call()
    except GatewayError as error:
        info = error.error_info
        return {
            "code": error.code().name,
            "message": error.details(),
            "violations": [[v.field, v.description] for v in error.field_violations],
            "reason": info.reason if info else None,
            "metadata": info.metadata if info else None,
            "retry_delay": error.retry_delay,
            "has_status": error.raw_status is not None,
        }
    return {"code": "OK"}


def main() -> None:
    address, scenario = sys.argv[1], sys.argv[2]
    client = SandboxClient(address, timeout=10)
    stub = openshell_pb2_grpc.OpenShellStub(_error_mapping_channel(grpc.insecure_channel(address)))
    calls = {
        "not_found": lambda: client.get("ghost", workspace="default"),
        "already_exists": lambda: client.create(workspace="default", name="taken"),
        "invalid_argument": lambda: client.create(workspace="default", name="x" * 300),
        "failed_precondition": lambda: stub.AttachSandboxProvider(
            openshell_pb2.AttachSandboxProviderRequest(sandbox="taken", provider="nope")
        ),
        "aborted": lambda: stub.AttachSandboxProvider(
            openshell_pb2.AttachSandboxProviderRequest(
                sandbox="taken", provider="gh", expected_resource_version=99
            )
        ),
        "unavailable": lambda: client.get("taken", workspace="default"),
        "bad_selector": lambda: client.list_all(workspace="default", label_selector="a in b"),
    }
    print(json.dumps(decoded(calls[scenario])))


if __name__ == "__main__":
    main()
