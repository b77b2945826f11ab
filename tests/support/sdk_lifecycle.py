"""Runs in a subprocess: the official SDK drives a gateway through a sandbox's whole life.

Prints one line per step, so the test can tell how far it got.
"""

from __future__ import annotations

import sys

from openshell import SandboxClient


def main() -> None:
    address = sys.argv[1]
    ws = "default"
    with SandboxClient(address, timeout=30) as client:
        health = client.health()
        print("health", health.status, flush=True)
        created = client.create(workspace=ws, name="e2e", labels={"suite": "e2e"})
        print("created", created.id, flush=True)
        client.create(workspace=ws, name="other", labels={"suite": "other"})
        ready = client.wait_ready("e2e", workspace=ws, timeout_seconds=60)
        print("ready", ready.status.phase, flush=True)
        got = client.get("e2e", workspace=ws)
        assert got.id == created.id, (got.id, created.id)
        listed = client.list_all(workspace=ws, label_selector="suite=e2e")
        assert [s.name for s in listed] == ["e2e"], listed
        print("listed", len(listed), flush=True)
        stopping = client.stop("e2e", workspace=ws)
        print("stop answered", stopping.status.phase, flush=True)
        client.wait_stopped("e2e", workspace=ws, timeout_seconds=60)
        print("stopped", flush=True)
        starting = client.start("e2e", workspace=ws)
        print("start answered", starting.status.phase, flush=True)
        client.wait_ready("e2e", workspace=ws, timeout_seconds=60)
        print("ready again", flush=True)
        deletion = client.delete("e2e", workspace=ws)
        print("delete answered", deletion.outcome.name, flush=True)
        client.wait_deleted("e2e", workspace=ws, timeout_seconds=60)
        print("deleted", flush=True)


if __name__ == "__main__":
    main()
