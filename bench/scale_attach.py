"""The attach half of ``bench.scale``: 16 clients attaching sandboxes to providers.

Each client owns one sandbox and, for a fixed time, attaches a provider to it and detaches it
again, through the repositories exactly as AttachSandboxProvider calls them (the reference
written by CAS, then the provider fenced). Either every client uses one shared provider, or
each its own. The attach latency and the calls that ran out of attempts (ABORTED on the
wire) are counted.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from bench.objects import bench_sandbox
from bench.stats import Latency
from shellgate.api import datamodel_pb2
from shellgate.reconcilers.sandbox import attach_provider, detach_provider
from shellgate.store import Conflict, Repositories, Store
from shellgate.store.secrets import KEY_BYTES, Keyring, SecretSealer

CLIENTS = 16


@dataclass
class AttachScale:
    backend: str
    shared: bool
    attaches: int
    aborted: int
    latency: Latency


async def run_attaches(store: Store, *, shared: bool, seconds: float) -> AttachScale:
    repos = Repositories(store, SecretSealer(Keyring([secrets.token_bytes(KEY_BYTES)])))
    tag = secrets.token_hex(3)
    names = [f"p-{tag}" if shared else f"p-{tag}-{n}" for n in range(CLIENTS)]
    for name in sorted(set(names)):
        provider = datamodel_pb2.Provider(type="github", credentials={"TOKEN": "x"})
        provider.metadata.id = secrets.token_hex(8)
        provider.metadata.name = name
        provider.metadata.workspace = "default"
        await repos.providers.create(provider)
    sandbox_ids = [
        (await store.create_message(bench_sandbox(), status="ready")).metadata.id
        for _ in range(CLIENTS)
    ]
    samples: list[float] = []
    aborted = 0
    stop_at = time.monotonic() + seconds

    async def client(sandbox_id: str, provider: str) -> None:
        nonlocal aborted
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                await repos.sandboxes.attach(
                    sandbox_id,
                    provider,
                    "default",
                    attach_provider(provider),
                    detach_provider(provider),
                )
            except Conflict:
                aborted += 1
                continue
            samples.append(time.perf_counter() - began)
            await repos.sandboxes.update(sandbox_id, detach_provider(provider))

    await asyncio.gather(*(client(s, p) for s, p in zip(sandbox_ids, names, strict=True)))
    return AttachScale(store.backend, shared, len(samples), aborted, Latency.of(samples))
