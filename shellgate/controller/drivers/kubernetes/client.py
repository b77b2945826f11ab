"""Credentials and Kubernetes API access for the driver, over ``kubernetes_asyncio``.

**One login.** A ``Login`` returns a ``kubernetes_asyncio`` ``Configuration`` (server, token,
certificates). Both the driver's own requests and kopf's watch use it, so there is exactly one
notion of "how we reach the cluster". In production that is
``login_in_cluster_or_kubeconfig``: the pod's service account when running in a cluster, else
the kubeconfig that ``KUBECONFIG`` names (exec plugins included). kopf is handed the same
credentials as a ``kopf.ConnectionInfo`` (``connection_info``). Tests pass a fixed
``Configuration`` whose host is the emulator.

**The client** is the library's asyncio API (``CustomObjectsApi`` and discovery), running in the
gateway's own event loop: a blocking client would have to run in threads, and calling it from
the loop that also answers it (kmock in tests) would deadlock. ``SandboxApi`` knows discovery
and the five verbs the driver needs and turns every failure into an ``ApiError``: 404 and 409
get their own subclasses, a connection error or timeout has status 0. On a 401 it logs in
again, once for every request that saw the same refused credentials, which picks up a rotated
token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from shellgate.controller.drivers.kubernetes.manifest import GROUP, PLURAL, Body

log = logging.getLogger(__name__)

Login = Callable[[], Awaitable[k8s.Configuration]]
"""Where credentials come from; called again whenever the current ones are refused."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500
DRIVER_USER_AGENT = "shellgate/driver"
WATCH_USER_AGENT = "shellgate/watch"
"""kopf's requests: audit logs (and tests) can tell the watch from the driver's writes."""

T = TypeVar("T")


class ApiError(Exception):
    """The API server refused a request, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status


class ApiNotFound(ApiError):
    """404: the object (or the resource) does not exist."""


class ApiConflict(ApiError):
    """409: the name is taken, or a resourceVersion precondition failed."""


# ---- credentials ---------------------------------------------------------------------------


async def login_in_cluster_or_kubeconfig() -> k8s.Configuration:
    """The pod's service account if present, else the kubeconfig ``$KUBECONFIG`` names.

    The same order kopf's own login follows. The environment is read on every call (not at
    import), so a login after a 401 sees a rotated token file or an edited kubeconfig.
    """
    configuration = k8s.Configuration()
    try:
        # The library ships no annotations for this one function.
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return configuration
    except k8s_config.ConfigException:
        pass
    try:
        await k8s_config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
            persist_config=False,
        )
    except (k8s_config.ConfigException, OSError) as exc:
        raise kopf.LoginError(f"no in-cluster service account and no kubeconfig: {exc}") from exc
    return configuration


def fixed_login(configuration: k8s.Configuration) -> Login:
    """Always the same credentials (tests, or a proxy that needs none)."""

    async def login() -> k8s.Configuration:
        return configuration

    return login


def configuration_for(server: str, token: str = "") -> k8s.Configuration:
    """Credentials for a plain URL (tests point this at the emulator)."""
    configuration = k8s.Configuration(host=server.rstrip("/"))
    if token:
        configuration.api_key["BearerToken"] = token
        configuration.api_key_prefix["BearerToken"] = "Bearer"
    return configuration


async def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """The same credentials in the shape kopf's login handlers return."""
    authorization = await configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = str(authorization).partition(" ")
    if not token:
        scheme, token = "Bearer", scheme
    return kopf.ConnectionInfo(
        server=str(configuration.host).rstrip("/"),
        scheme=scheme if token else None,
        token=token or None,
        username=configuration.username or None,
        password=configuration.password or None,
        ca_path=configuration.ssl_ca_cert or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        insecure=not configuration.verify_ssl,
        proxy_url=configuration.proxy or None,
    )


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


# ---- the client ----------------------------------------------------------------------------


class SandboxApi:
    """Discovery and the ``Sandbox`` verbs the driver needs, with errors as ``ApiError``."""

    def __init__(self, login: Login) -> None:
        self._login = login
        self._client: k8s.ApiClient | None = None
        self._retired: list[k8s.ApiClient] = []  # replaced after a 401; see close()
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        for retired in self._retired:
            await retired.close()
        self._retired.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def served_versions(self, group: str = GROUP) -> list[str] | None:
        """The versions of ``group`` the server offers; None when it does not serve it.

        Reads the group's discovery document (``/apis/<group>``). The generated client has
        no method for a custom group's document, so it goes through the library's generic
        ``call_api`` (same credentials, errors and timeouts as every other call).
        """
        try:
            document = await self._call(
                lambda api: api.call_api(
                    "/apis/{group}", "GET",
                    path_params={"group": group},
                    header_params={"Accept": "application/json"},
                    response_types_map={200: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )  # fmt: skip
        except ApiNotFound:
            return None
        versions = document.get("versions") if isinstance(document, dict) else None
        return [str(v.get("version")) for v in versions or () if isinstance(v, dict)]

    async def get(self, version: str, namespace: str, name: str) -> Body:
        return await self._custom(
            lambda api: api.get_namespaced_custom_object(
                GROUP, version, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        )

    async def create(self, version: str, namespace: str, body: Body) -> Body:
        """The created object; empty when the server answered 2xx without one."""
        return await self._custom(
            lambda api: api.create_namespaced_custom_object(
                GROUP, version, namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT
            )
        )

    async def patch(self, version: str, namespace: str, name: str, patch: Body) -> Body:
        """A JSON merge patch.

        Left to itself the library sends a dict as JSON Patch, which a merge-patch body is
        not. ``_content_type`` is the library's documented override; its type stubs lack it.
        """
        return await self._custom(
            lambda api: api.patch_namespaced_custom_object(  # type: ignore[call-arg]
                GROUP, version, namespace, PLURAL, name, patch,
                _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
            )
        )  # fmt: skip

    async def delete(self, version: str, namespace: str, name: str, *, uid: str | None) -> Body:
        """Delete ``name``, only if it is still the object with ``uid`` (when given)."""
        options = k8s.V1DeleteOptions(
            api_version="v1",
            kind="DeleteOptions",
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None,
        )
        return await self._custom(
            lambda api: api.delete_namespaced_custom_object(
                GROUP, version, namespace, PLURAL, name, body=options,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )  # fmt: skip

    async def list_all(self, version: str, namespace: str, *, label_selector: str) -> list[Body]:
        """Every item of the namespace's collection, following ``continue`` tokens."""
        items: list[Body] = []
        token = ""
        while True:
            listed = await self._custom(
                lambda api, token=token: api.list_namespaced_custom_object(  # type: ignore[misc]
                    GROUP, version, namespace, PLURAL,
                    label_selector=label_selector, limit=LIST_PAGE, _continue=token or None,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )  # fmt: skip
            items.extend(listed.get("items") or ())
            token = str((listed.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    async def with_client(self, call: Callable[[k8s.ApiClient], Awaitable[T]]) -> T:
        """Run ``call`` with the live library client, its errors as ``ApiError`` and one new
        login after a 401: how the pod subresources (``exec``, ``logs``) reach the server."""
        return await self._call(call)

    async def pod_exists(self, namespace: str, name: str) -> bool | None:
        """Whether the pod ``name`` exists; None when we may not read pods (403).

        Reading pods is not needed for anything else, so a gateway without that permission
        still works, only without this check.
        """
        try:
            await self._call(
                lambda api: k8s.CoreV1Api(api).read_namespaced_pod(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except ApiNotFound:
            return False
        except ApiError as exc:
            if exc.status == 403:
                return None
            raise
        return True

    async def _custom(self, call: Callable[[k8s.CustomObjectsApi], Awaitable[Any]]) -> Body:
        result = await self._call(lambda api: call(k8s.CustomObjectsApi(api)))
        return result if isinstance(result, dict) else {}

    async def _call(self, call: Callable[[k8s.ApiClient], Awaitable[T]]) -> T:
        """Run ``call`` with the live client; on a 401 log in again once and repeat it."""
        client = await self._current_client(rejected=None)
        try:
            return await _translated(call(client))
        except ApiError as exc:
            if exc.status != 401:
                raise
        client = await self._current_client(rejected=client)
        return await _translated(call(client))

    async def _current_client(self, rejected: k8s.ApiClient | None) -> k8s.ApiClient:
        """The live client; a new one (after logging in) only if ``rejected`` is still live.

        When a token rotates, every request in flight gets a 401; only the first renews, the
        rest reuse its new client. A replaced client is not closed here, since other requests
        may still be reading from it; ``close()`` closes it.
        """
        async with self._lock:
            if self._client is None or (rejected is not None and rejected is self._client):
                configuration = await self._login()
                if self._client is not None:
                    self._retired.append(self._client)
                self._client = k8s.ApiClient(configuration)
                self._client.user_agent = DRIVER_USER_AGENT
            return self._client


async def _translated(pending: Awaitable[T]) -> T:
    """The library's exceptions as ``ApiError``s (404, 409, others; 0 when unreachable)."""
    try:
        return await pending
    except k8s.ApiException as exc:
        status = int(exc.status or 0)
        message = _status_message(exc)
        if status == 404:
            raise ApiNotFound(404, message) from exc
        if status == 409:
            raise ApiConflict(409, message) from exc
        raise ApiError(status, message) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ApiError(0, str(exc) or type(exc).__name__) from exc


def _status_message(exc: k8s.ApiException) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the reason, shortened."""
    text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    try:
        decoded = json.loads(text or "")
    except ValueError:
        return str(text or exc.reason or "")[:300]
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])[:300]
    return str(text)[:300]
