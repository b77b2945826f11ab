"""A rotated token: requests in flight get 401, one of them logs in again, all succeed."""

from __future__ import annotations

import asyncio

from aiohttp import web
from kubernetes_asyncio import client as k8s

from shellgate.controller.drivers.kubernetes.client import SandboxApi, configuration_for
from tests.support.processes import free_port

NAMESPACE = "ns"
THING = f"/apis/agents.x-k8s.io/v1beta1/namespaces/{NAMESPACE}/sandboxes/thing"


async def test_concurrent_401s_log_in_once_and_every_request_succeeds() -> None:
    valid = {"token": "old"}
    started = asyncio.Event()
    started.set()  # the first request passes; the batch below waits for all five
    in_flight = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight
        in_flight += 1
        if in_flight >= 5:
            started.set()
        await started.wait()  # every request is in flight before any is answered
        if request.headers.get("Authorization") != f"Bearer {valid['token']}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "Thing"})

    app = web.Application()
    app.router.add_get(THING, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    logins = 0

    async def login() -> k8s.Configuration:
        nonlocal logins
        logins += 1
        return configuration_for(f"http://127.0.0.1:{port}", token="old" if logins == 1 else "new")

    api = SandboxApi(login)
    try:
        await api.get("v1beta1", NAMESPACE, "thing")  # first login, token "old" works
        valid["token"] = "new"  # the token rotates
        started.clear()
        in_flight = 0
        results = await asyncio.gather(*(api.get("v1beta1", NAMESPACE, "thing") for _ in range(5)))
    finally:
        await api.close()
        await runner.cleanup()
    assert results == [{"kind": "Thing"}] * 5
    assert logins == 2, "one renewal serves every request that saw the 401"
