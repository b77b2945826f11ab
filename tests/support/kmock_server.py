"""A kmock Kubernetes API as a process, for end-to-end tests with real ``shellgate`` processes.

    python -m tests.support.kmock_server --port 0 --ready-file /tmp/kmock.port \
        [--version v1beta1 ...] [--kubeconfig /tmp/kubeconfig] [--pod-root DIR]

It serves ``SandboxEmulator`` (tests/support/k8s_emulator.py) on 127.0.0.1 with agent-sandbox
``sandboxes`` registered at the given versions. Once listening it writes a kubeconfig that
points at it (when asked) and then its port into the ready file, so a test waits for the file
rather than sleeping. With ``--pod-root`` every pod name answers ``pods/exec`` and
``pods/log``, its commands running as local processes in DIR (tests/support/pod_runtime.py).
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import kmock

from tests.support.k8s_emulator import SandboxEmulator, serve_sandboxes
from tests.support.pod_runtime import PodRuntime

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: kmock
  cluster:
    server: {server}
users:
- name: kmock
  user:
    token: kmock
contexts:
- name: kmock
  context:
    cluster: kmock
    user: kmock
current-context: kmock
"""


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(KUBECONFIG.format(server=server))


async def serve(
    port: int,
    versions: list[str],
    ready_file: Path,
    kubeconfig: Path | None,
    pod_root: Path | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with (
        SandboxEmulator(
            keep_requests=False,
            pod_runtime=PodRuntime(default_root=pod_root) if pod_root is not None else None,
        ) as emulator,
        kmock.Server(emulator, port=port or None) as server,
    ):
        serve_sandboxes(emulator, versions)
        url = str(server.url).rstrip("/")
        if kubeconfig is not None:
            write_kubeconfig(kubeconfig, url)
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(ready_file)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--version", action="append", dest="versions")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--pod-root", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                args.port,
                args.versions or ["v1beta1"],
                args.ready_file,
                args.kubeconfig,
                args.pod_root,
            )
        )


if __name__ == "__main__":
    main()
