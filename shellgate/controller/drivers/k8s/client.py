"""Credentials and a small asynchronous REST client for the Kubernetes API.

One login function gives a ``kopf.ConnectionInfo``; both kopf (through its login handler) and
the driver's own requests use it, so there is exactly one notion of "how we reach the
cluster". In production that is ``kopf.login_via_client``: in-cluster service-account
credentials when running in a pod, else the kubeconfig that ``KUBECONFIG`` names (read through
the official ``kubernetes`` package, which also runs exec plugins). Tests pass a fixed
``ConnectionInfo`` pointing at kmock (testing.md §2, pitfall C).

The client speaks aiohttp in the gateway's own event loop: the official client is blocking, and
calling it from the loop that also serves kmock in tests would deadlock. It knows five verbs
and turns HTTP failures into ``ApiError`` subclasses; on 401 it logs in again once, which picks
up a rotated service-account token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from shellgate.controller.drivers.k8s.manifest import Body

log = logging.getLogger(__name__)

Login = Callable[[], Awaitable[kopf.ConnectionInfo]]
"""Where credentials come from; called again whenever the current ones are refused."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MERGE_PATCH = "application/merge-patch+json"
DRIVER_USER_AGENT = "shellgate/driver"
WATCH_USER_AGENT = "shellgate/watch"
"""kopf's requests: audit logs (and tests) can tell the watch from the driver's writes."""


class ApiError(Exception):
    """The API server refused a request, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status


class ApiNotFound(ApiError):
    """404: the object (or the resource) does not exist."""


class ApiConflict(ApiError):
    """409: the name is taken, or a resourceVersion precondition failed."""


async def login_in_cluster_or_kubeconfig() -> kopf.ConnectionInfo:
    """In-cluster service account if present, else ``$KUBECONFIG`` (kopf.login_via_client)."""
    settings = kopf.OperatorSettings()
    info = await asyncio.to_thread(kopf.login_via_client, logger=log, settings=settings)
    if info is None:
        raise kopf.LoginError("the kubernetes client library is not installed")
    return info


def fixed_login(info: kopf.ConnectionInfo) -> Login:
    """Always the same credentials (tests, or a proxy that needs none)."""

    async def login() -> kopf.ConnectionInfo:
        return info

    return login


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def open_session(
    info: kopf.ConnectionInfo,
    *,
    user_agent: str = DRIVER_USER_AGENT,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """An HTTP session with the credentials of ``info`` (as kopf builds its own)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers={"User-Agent": user_agent, **info.as_http_headers()},
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        trace_configs=list(trace_configs) or None,
    )


class ApiClient:
    """get / list / post / patch / delete against one API server, JSON in and out."""

    def __init__(self, login: Login) -> None:
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []  # replaced after a 401; see close()
        self._server = ""
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        for retired in self._retired:
            await retired.close()
        self._retired.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Body:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Body) -> Body:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Body) -> Body:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: Body | None = None) -> Body:
        return await self.request("DELETE", path, body=body)

    async def list_all(self, path: str, *, label_selector: str = "", page: int = 500) -> list[Body]:
        """Every item of a collection, following ``continue`` tokens."""
        items: list[Body] = []
        token = ""
        while True:
            params = {"limit": str(page)}
            if label_selector:
                params["labelSelector"] = label_selector
            if token:
                params["continue"] = token
            listed = await self.get(path, params)
            items.extend(listed.get("items") or ())
            token = str((listed.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Body | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Body:
        rejected: aiohttp.ClientSession | None = None
        for attempt in (1, 2):
            session = await self._current_session(rejected)
            try:
                async with session.request(
                    method,
                    self._server + path,
                    json=body,
                    params=params,
                    headers={"Content-Type": content_type},
                    timeout=REQUEST_TIMEOUT,
                ) as response:
                    if response.status == 401 and attempt == 1:
                        rejected = session  # credentials expired: log in again, once
                        continue
                    return await _decoded(response, method, path)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(0, f"{method} {path}: {exc or type(exc).__name__}") from exc
        raise ApiError(401, f"{method} {path}: unauthorized after logging in again")

    async def _current_session(
        self, rejected: aiohttp.ClientSession | None
    ) -> aiohttp.ClientSession:
        """The live session; a new one (after logging in) only if ``rejected`` is still live.

        When a token rotates, every request in flight gets a 401; only the first renews, the
        rest reuse its new session. A replaced session is not closed here, since other
        requests may still be reading from it; ``close()`` closes it.
        """
        async with self._lock:
            if self._session is None or (rejected is not None and rejected is self._session):
                info = await self._login()
                if self._session is not None:
                    self._retired.append(self._session)
                self._session = open_session(info)
                self._server = info.server.rstrip("/")
            return self._session


async def _decoded(response: aiohttp.ClientResponse, method: str, path: str) -> Body:
    if response.status < 300:
        payload: Any = await response.json(content_type=None)
        return payload if isinstance(payload, dict) else {}
    text = await response.text()
    message = f"{method} {path}: {_status_message(text)}"
    if response.status == 404:
        raise ApiNotFound(404, message)
    if response.status == 409:
        raise ApiConflict(409, message)
    raise ApiError(response.status, message)


def _status_message(text: str) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, or the raw text, shortened."""
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])[:300]
    return text[:300]
