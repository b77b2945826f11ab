"""Runs in a subprocess (the SDK's protobuf modules cannot share a process with ours).

ARGV[1] is JSON: {"endpoint": "host:port", "attempts": [{"ca", "cert", "key", "token"}...]}
(every attempt field optional). For each attempt the official SDK connects the way the
fields say (TLS when "ca" is given, a client certificate with "cert"/"key", a bearer token
with "token") and lists the default workspace's sandboxes, an RPC that needs an
authenticated caller. Prints one JSON list: the status code name of each attempt ("OK").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from openshell import SandboxClient, TlsConfig
from openshell.errors import GatewayError


def attempt(endpoint: str, spec: dict[str, str]) -> str:
    tls = None
    if "ca" in spec:
        cert = Path(spec["cert"]) if "cert" in spec else None
        key = Path(spec["key"]) if "key" in spec else None
        tls = TlsConfig(ca_path=Path(spec["ca"]), cert_path=cert, key_path=key)
    client = SandboxClient(endpoint, tls=tls, bearer_token=spec.get("token"), timeout=5)
    try:
        client.list_all(workspace="default")
    except GatewayError as error:
        return str(error.code().name)
    finally:
        client.close()
    return "OK"


def main() -> None:
    request = json.loads(sys.argv[1])
    print(json.dumps([attempt(request["endpoint"], spec) for spec in request["attempts"]]))


if __name__ == "__main__":
    main()
