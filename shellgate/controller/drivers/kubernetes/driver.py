"""The Kubernetes compute driver: every sandbox is one agent-sandbox ``Sandbox`` object.

Every replica runs this driver against the same namespace, and any replica may act on any
object (``routes_by_owner = False``, ``owns()`` is always True): operations are idempotent by
sandbox id and carry Kubernetes preconditions, so two replicas doing the same thing is
harmless. The driver never writes the store. docs/kubernetes.md describes the whole design.

- **API version** comes from discovery at start: ``v1beta1`` when served, else ``v1alpha1``
  (logged). Existing objects are patched at the version they report.
- **Create** checks the request against the operator's pod policy (INVALID_ARGUMENT before
  anything is sent), then posts the object (``manifest`` builds it, ``client`` sends it). A
  name that is
  taken by an object with our sandbox id is success (a retried create); taken by anything
  else is a ``DriverConflict``, which the caller reports as ALREADY_EXISTS after rolling its
  row back.
- **Stop / start** read the object and send a merge patch of ``spec.operatingMode``
  (v1alpha1: ``spec.replicas``) that carries the ``resourceVersion`` just read; a 409 means
  someone changed it meanwhile, and the read-patch is repeated.
- **Start** of an object whose pod has ended stops it first (``manifest.start_patch``); the
  reconcile loop asks again once the stop is confirmed, and the object is set running.
- **Installations.** Only objects labelled with this installation's gateway id (or with none,
  from before the label existed) are read, listed, reported or acted on.
- **Delete** deletes the object with a ``uid`` precondition, so an object re-created under
  the same name for another sandbox is never hit. The store row goes when the watch reports
  the object gone (a ``DeletedEvent``), not here.
- **Finding an object by id.** The driver API speaks sandbox ids; Kubernetes names objects.
  An index filled by the watch (and by create) maps ids to names; an id it does not know is
  looked up by label selector (and the label is checked again, since a server may ignore the
  selector).
- **Watch.** kopf (``watch``, in a thread of its own) delivers every Sandbox event and every
  core ``Event`` of the namespace, handed over to this driver's event loop. A Sandbox we
  manage becomes a ``SnapshotEvent`` (or a ``DeletedEvent``); an ``Event`` about one of our
  Sandboxes or its pod becomes a ``PlatformEvent``, published once per replica even when a
  relist replays it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
from collections.abc import Iterable
from typing import Protocol

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DeletedEvent,
    DriverConflict,
    DriverError,
    DriverEvent,
    SnapshotEvent,
)
from shellgate.controller.drivers.exec import CommandNotStarted, ExecSpec, LogLine, LogQuery
from shellgate.controller.drivers.fanout import EventFanout, PublishesThroughFanout
from shellgate.controller.drivers.kubernetes.client import (
    ApiConflict,
    ApiError,
    ApiNotFound,
    Login,
    SandboxApi,
    default_namespace,
    login_in_cluster_or_kubeconfig,
)
from shellgate.controller.drivers.kubernetes.exec import PodExecSession, open_pod_exec, pod_phase
from shellgate.controller.drivers.kubernetes.logs import read_pod_logs
from shellgate.controller.drivers.kubernetes.manifest import (
    CONTAINER_NAME,
    GROUP,
    KIND,
    MANAGED_SELECTOR,
    SANDBOX_ID_LABEL,
    Body,
    ManifestError,
    belongs_to,
    choose_version,
    event_identity,
    involved_object,
    labelled_for,
    lifecycle_patch,
    object_path,
    platform_event_of,
    pod_name_of,
    resource_capabilities,
    sandbox_id_of,
    sandbox_object,
    snapshot_of,
    start_patch,
    version_of,
)
from shellgate.controller.drivers.kubernetes.watch import DEFAULT_ERROR_BACKOFFS, KopfWatch
from shellgate.reconcilers.pod_policy import PodSettings, validate_pod_request
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.reconcilers.validation import require_valid
from shellgate.store import Conflict, NullObserver, RetryPolicy
from shellgate.store.retry import retry_on_conflict

log = logging.getLogger(__name__)

PATCH_ATTEMPTS = 5
PATCH_RETRY = RetryPolicy(attempts=PATCH_ATTEMPTS)
"""A lost PATCH (409) is re-read and re-decided, with the store's jittered pauses."""
DISCOVERY_DELAYS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15)
"""Pauses between discovery attempts at start; then start fails (and the pod restarts)."""
SEEN_EVENTS = 4096
"""How many core Event deliveries are remembered to drop replays."""
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")


class DriverSettings(Protocol):
    """The part of ``ServeOptions`` this driver reads."""

    namespace: str
    sandbox_image: str
    pod_settings: PodSettings


class KubernetesDriver(PublishesThroughFanout):
    """agent-sandbox ``Sandbox`` objects in one namespace (see the module docstring)."""

    name = "kubernetes"
    routes_by_owner = False

    def __init__(
        self,
        *,
        login: Login,
        namespace: str,
        sandbox_image: str = "",
        version: str | None = None,
        error_backoffs: Iterable[float] = DEFAULT_ERROR_BACKOFFS,
        discovery_delays: Iterable[float] = DISCOVERY_DELAYS,
        pod_settings: PodSettings | None = None,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        self.namespace = namespace
        self.sandbox_image = sandbox_image
        self.pod_settings = pod_settings or PodSettings()
        self.gateway_id = self.pod_settings.gateway_id
        self._login = login
        self._api = SandboxApi(login)
        self._version = version
        self._error_backoffs = tuple(error_backoffs)
        self._discovery_delays = tuple(discovery_delays)
        self._rng = random.Random()
        self._names: dict[str, str] = {}  # sandbox id -> Sandbox name
        self._by_object: dict[str, str] = {}  # Sandbox name -> sandbox id
        self._by_pod: dict[str, str] = {}  # pod name -> sandbox id
        self._seen_events: collections.OrderedDict[tuple[str, ...], None] = (
            collections.OrderedDict()
        )
        self._fanout = EventFanout()
        self._watch: KopfWatch | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: DriverSettings) -> KubernetesDriver:
        """Production wiring: in-cluster or kubeconfig credentials, ``--namespace``, image."""
        return cls(
            login=login_in_cluster_or_kubeconfig,
            namespace=config.namespace or default_namespace(),
            sandbox_image=config.sandbox_image,
            pod_settings=config.pod_settings,
        )

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The agent-sandbox API version in use (known after ``start``)."""
        return self._version

    @property
    def watch_ready(self) -> bool:
        return self._watch is not None and self._watch.ready and not self._closed

    def resource_capabilities(self) -> openshell_pb2.ResourceCapabilities:
        """What a sandbox's pod honours of its spec's resources (GetGatewayInfo)."""
        return resource_capabilities()

    async def start(self) -> None:
        """Discover the API version, then start watching (readiness follows the watch)."""
        if self._watch is not None or self._closed:
            return
        if self._version is None:
            self._version = await self._discover_version()
        self._watch = KopfWatch(
            login=self._login,
            namespace=self.namespace,
            version=self._version,
            on_sandbox=self.handle_sandbox_event,
            on_core_event=self.handle_core_event,
            error_backoffs=self._error_backoffs,
        )
        _quiet_kopf_handler_logs()
        await self._watch.start()
        log.info("watching agent-sandbox Sandboxes in namespace %s", self.namespace)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            await self._watch.close()
        await self._api.close()
        self._fanout.close()

    async def _discover_version(self) -> str:
        served = await self._served_versions()
        if served is None:
            raise DriverError(f"the API server does not serve {GROUP}")
        version = choose_version(served)
        if version is None:
            raise DriverError(f"{GROUP} serves none of v1beta1, v1alpha1 (served: {served})")
        log.info("agent-sandbox API: using %s/%s (served: %s)", GROUP, version, served)
        return version

    async def _served_versions(self) -> list[str] | None:
        """Discovery, retried after each pause of ``discovery_delays`` while unreachable.

        At start the API server may not answer yet (a pod starting with the cluster); a
        definite answer, even "not served", ends the wait at once.
        """
        last_error: ApiError | None = None
        for pause in (0.0, *self._discovery_delays):
            await asyncio.sleep(pause)
            try:
                return await self._api.served_versions(GROUP)
            except ApiError as exc:
                last_error = exc
                log.warning("discovery of %s failed: %s", GROUP, exc)
        raise DriverError(f"cannot reach the Kubernetes API: {last_error}")

    def _require_version(self) -> str:
        if self._version is None:
            raise DriverError("the Kubernetes driver is not started")
        return self._version

    # ---- operations ------------------------------------------------------------------------

    def owns(self, sandbox_id: str) -> bool:
        return True

    async def create_sandbox(self, sandbox: openshell_pb2.Sandbox) -> None:
        """Create the object; a request the operator's pod policy refuses is INVALID_ARGUMENT
        (``InvalidArgument``), checked before anything is sent."""
        version = self._require_version()
        require_valid(validate_pod_request(sandbox.spec, self.pod_settings.policy))
        try:
            body = sandbox_object(
                sandbox,
                version=version,
                namespace=self.namespace,
                default_image=self.sandbox_image,
                settings=self.pod_settings,
            )
        except ManifestError as exc:
            raise DriverError(str(exc)) from exc
        name = str(body["metadata"]["name"])
        try:
            created = await self._api.create(version, self.namespace, body)
        except ApiConflict:
            await self._adopt_existing(sandbox.metadata.id, name)
            return
        except ApiError as exc:
            raise DriverError(f"cannot create Sandbox {name}: {exc}") from exc
        self._remember(sandbox.metadata.id, created or body)
        log.debug("created Sandbox %s/%s for sandbox %s", self.namespace, name, sandbox.metadata.id)

    async def _adopt_existing(self, sandbox_id: str, name: str) -> None:
        """The name is taken: success if by our sandbox (a repeated create), else a conflict."""
        existing = await self._get_by_name(name)
        owner = sandbox_id_of(existing) if existing is not None else None
        if existing is not None and not belongs_to(existing, self.gateway_id):
            owner = None  # another installation's object, whatever its sandbox id
        if existing is not None and owner == sandbox_id:
            self._remember(sandbox_id, existing)
            return
        holder = f"sandbox {owner}" if owner else "an object shellgate does not manage"
        if existing is None:
            holder = "an object that is being removed; retry"
        raise DriverConflict(f"Sandbox {self.namespace}/{name} already exists for {holder}")

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        body = await self._find(sandbox_id)
        if body is None:
            return False
        uid = body.get("metadata", {}).get("uid")
        try:
            await self._api.delete(*_coordinates(body, self.namespace), uid=uid or None)
        except (ApiNotFound, ApiConflict):
            return False  # gone, or replaced by an object of another sandbox
        except ApiError as exc:
            raise DriverError(f"cannot delete the Sandbox of {sandbox_id}: {exc}") from exc
        log.info("deleting Sandbox %s for sandbox %s", object_path(body), sandbox_id)
        return True

    async def stop_sandbox(self, sandbox_id: str) -> None:
        await self._set_running(sandbox_id, running=False)

    async def start_sandbox(self, sandbox_id: str) -> None:
        """Run it again: set a stopped object running, or stop an object whose pod ended
        (``start_patch``); the reconcile loop asks again once that stop is confirmed."""
        await self._set_running(sandbox_id, running=True)

    async def _set_running(self, sandbox_id: str, *, running: bool) -> None:
        """Read, patch with the version read; on 409 read again and decide again, through the
        store's retry helper (PATCH_ATTEMPTS in all, with its jittered pauses)."""
        action = "start" if running else "stop"

        async def attempt() -> None:
            body = await self._find(sandbox_id)
            if body is None:
                log.warning("sandbox %s: no Sandbox object to %s", sandbox_id, action)
                return  # the resync turns a transition without its object into ERROR
            patch = start_patch(body) if running else lifecycle_patch(body, running=False)
            if patch is None or (running and await self._old_pod_lingers(body, patch)):
                return
            try:
                await self._api.patch(*_coordinates(body, self.namespace), patch)
            except ApiError as exc:
                if isinstance(exc, ApiConflict | ApiNotFound):
                    raise
                raise DriverError(f"cannot {action} sandbox {sandbox_id}: {exc}") from exc

        try:
            await retry_on_conflict(
                PATCH_RETRY,
                self._rng,
                attempt,
                observer=NullObserver(),
                object_type=None,
                retriable=(ApiConflict, ApiNotFound),
            )
        except (ApiConflict, ApiNotFound, Conflict):
            raise DriverError(
                f"cannot {action} sandbox {sandbox_id}: it kept changing, try again"
            ) from None

    async def _old_pod_lingers(self, body: Body, patch: Body) -> bool:
        """A start that would run a stopped object while its old pod still exists waits.

        agent-sandbox v0.4.x and v0.5.0-v0.5.3 confirm a stop before the pod has finished
        terminating; run again then, the controller finds the old pod by name (an ended pod
        keeps its failure) and the sandbox fails again. The resync re-issues the start. When
        pods may not be read (403), the start goes on.
        """
        if not _sets_running(patch):
            return False
        pod = pod_name_of(body)
        try:
            exists = await self._api.pod_exists(self.namespace, pod)
        except ApiError as exc:
            raise DriverError(f"cannot read pod {pod}: {exc}") from exc
        if exists:
            log.info("start of %s waits: its old pod %s still exists", object_path(body), pod)
        return bool(exists)

    async def get_sandbox(self, sandbox_id: str) -> DriverSnapshot | None:
        body = await self._find(sandbox_id)
        return snapshot_of(body) if body is not None else None

    async def list_sandboxes(self) -> list[DriverSnapshot]:
        """This installation's objects only: another's are neither reported nor swept.

        Objects without a gateway id (written before the label existed) are left out too. The
        listing is what the resync deletes orphans from, and such an object might be another
        installation's; its own row still finds it by id (``get_sandbox``) and its watch events.
        """
        mine = (b for b in await self._list(MANAGED_SELECTOR) if labelled_for(b, self.gateway_id))
        snapshots = (snapshot_of(body) for body in mine)
        return [s for s in snapshots if s is not None]

    # ---- exec and logs (pods/exec, pods/log of the sandbox's pod) ---------------------------

    async def open_exec(self, sandbox: openshell_pb2.Sandbox, spec: ExecSpec) -> PodExecSession:
        """Run ``spec`` in the sandbox's pod over ``pods/exec`` (module ``exec``)."""
        namespace, pod = await self._pod_of(sandbox.metadata.id)
        try:
            return await self._api.with_client(
                lambda api: open_pod_exec(
                    api, namespace=namespace, pod=pod, container=CONTAINER_NAME, spec=spec
                )
            )
        except ApiError as exc:
            if exc.status in (400, 404):  # no running container: retrying now will not help
                state = await self._pod_state(namespace, pod)
                raise CommandNotStarted(f"{exc}; {state}") from exc
            raise DriverError(str(exc)) from exc

    async def _pod_state(self, namespace: str, pod: str) -> str:
        """Why exec found no running container: the pod is missing, or not running yet."""
        try:
            phase = await self._api.with_client(
                lambda api: pod_phase(api, namespace=namespace, pod=pod)
            )
        except ApiNotFound:
            return f"pod {namespace}/{pod} does not exist (stopped, or not created yet)"
        except ApiError as exc:
            return f"the state of pod {namespace}/{pod} is unknown ({exc})"
        return f"pod {namespace}/{pod} is {phase}"

    async def read_logs(self, sandbox: openshell_pb2.Sandbox, query: LogQuery) -> list[LogLine]:
        """The sandbox container's output from ``pods/log`` (module ``logs``)."""
        namespace, pod = await self._pod_of(sandbox.metadata.id)
        try:
            return await self._api.with_client(
                lambda api: read_pod_logs(
                    api, namespace=namespace, pod=pod, container=CONTAINER_NAME, query=query
                )
            )
        except ApiError as exc:
            if exc.status in (400, 404):
                # No pod (stopped, not created yet) or no container started yet (the API
                # server answers 400 "waiting to start"): there is no output to show.
                log.debug("no logs for pod %s/%s: %s", namespace, pod, exc)
                return []
            raise DriverError(f"cannot read the logs of pod {namespace}/{pod}: {exc}") from exc

    async def _pod_of(self, sandbox_id: str) -> tuple[str, str]:
        """(namespace, pod name) of the sandbox, read from its object now: the controller
        may have adopted a warm pod since the last event, and any replica may be asked."""
        body = await self._find(sandbox_id)
        if body is None:
            raise DriverError(f"sandbox {sandbox_id} has no Sandbox object")
        namespace = str(body.get("metadata", {}).get("namespace") or self.namespace)
        return namespace, pod_name_of(body)

    # ---- reading objects -------------------------------------------------------------------

    async def _find(self, sandbox_id: str) -> Body | None:
        """The object of ``sandbox_id``: by the name index first, then by label selector.

        The selector finds objects whatever their name, so objects named before names
        included the workspace are still found, stopped, started and deleted.
        """
        name = self._names.get(sandbox_id)
        if name is not None:
            body = await self._get_by_name(name)
            if body is not None and self._is_mine(body, sandbox_id):
                return body
        if not _LABEL_VALUE.fullmatch(sandbox_id):
            return None  # cannot be a label value, so no object of ours carries it
        for body in await self._list(f"{MANAGED_SELECTOR},{SANDBOX_ID_LABEL}={sandbox_id}"):
            if self._is_mine(body, sandbox_id):
                return body
        return None

    def _is_mine(self, body: Body, sandbox_id: str) -> bool:
        return sandbox_id_of(body) == sandbox_id and belongs_to(body, self.gateway_id)

    async def _get_by_name(self, name: str) -> Body | None:
        try:
            return await self._api.get(self._require_version(), self.namespace, name)
        except ApiNotFound:
            return None
        except ApiError as exc:
            raise DriverError(f"cannot read Sandbox {name}: {exc}") from exc

    async def _list(self, selector: str) -> list[Body]:
        try:
            return await self._api.list_all(
                self._require_version(), self.namespace, label_selector=selector
            )
        except ApiError as exc:
            raise DriverError(f"cannot list Sandboxes: {exc}") from exc

    # ---- watch events ----------------------------------------------------------------------

    def handle_sandbox_event(self, event_type: str | None, body: Body) -> None:
        """A Sandbox watch event (type None: from a listing) as a driver event."""
        sandbox_id = sandbox_id_of(body)
        if sandbox_id is None or not belongs_to(body, self.gateway_id):
            return  # not managed by shellgate, or by another installation
        if event_type == "DELETED":
            self._forget(sandbox_id, body)
            self._emit(DeletedEvent(sandbox_id=sandbox_id))
            return
        snapshot = snapshot_of(body)
        if snapshot is not None:
            self._remember(sandbox_id, body)
            self._emit(SnapshotEvent(snapshot=snapshot))

    def handle_core_event(self, body: Body) -> None:
        """A core Event about one of our Sandboxes or its pod, as a platform event (once)."""
        involved = involved_object(body)
        if involved is None:
            return
        kind, name = involved
        sandbox_id = (self._by_object if kind == KIND else self._by_pod).get(name)
        if sandbox_id is None:
            return
        identity = event_identity(body)
        if identity in self._seen_events:
            return
        self._seen_events[identity] = None
        while len(self._seen_events) > SEEN_EVENTS:
            self._seen_events.popitem(last=False)
        self._emit(platform_event_of(body, sandbox_id))

    def _remember(self, sandbox_id: str, body: Body) -> None:
        name = str(body.get("metadata", {}).get("name", ""))
        if name:
            self._names[sandbox_id] = name
            self._by_object[name] = sandbox_id
            self._by_pod[pod_name_of(body)] = sandbox_id

    def _forget(self, sandbox_id: str, body: Body) -> None:
        name = str(body.get("metadata", {}).get("name", ""))
        if self._names.get(sandbox_id) == name:
            del self._names[sandbox_id]
        for index, key in ((self._by_object, name), (self._by_pod, pod_name_of(body))):
            if index.get(key) == sandbox_id:
                del index[key]

    def _emit(self, event: DriverEvent) -> None:
        self._fanout.publish(event)


def _coordinates(body: Body, default_namespace: str) -> tuple[str, str, str]:
    """(version, namespace, name) of an existing object, at the version it reports itself."""
    meta = body.get("metadata", {})
    return version_of(body), str(meta.get("namespace") or default_namespace), str(meta["name"])


def _sets_running(patch: Body) -> bool:
    spec = patch.get("spec") or {}
    return spec.get("operatingMode") == "Running" or spec.get("replicas") == 1


def _quiet_kopf_handler_logs() -> None:
    """kopf logs every handler call at INFO; at one call per watch event that is noise."""
    handler_log = logging.getLogger("kopf.objects")
    if handler_log.level == logging.NOTSET:
        handler_log.setLevel(logging.WARNING)
