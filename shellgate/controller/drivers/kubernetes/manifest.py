"""agent-sandbox ``Sandbox`` objects as plain dictionaries: what we write and what we read.

Pure functions only, so the mapping can be table-tested without a cluster. The driver
(``shellgate.controller.drivers.kubernetes``) does the I/O around them.

**Writing.** A sandbox becomes one ``Sandbox`` object named ``{workspace}--{name}``
(``object_name``), labelled ``openshell.ai/sandbox-id=<id>``, ``openshell.ai/managed-by=shellgate``
and ``openshell.ai/gateway-id=<installation>``. Its ``spec.podTemplate`` carries one container
built from the spec: the image (``spec.template.image``, else the gateway's
``--sandbox-image``), the command, the environment (template entries overridden by
``spec.environment``, as the local driver does) and the resources (``spec.template.resources``
as a Kubernetes ``ResourceRequirements`` map with quantities as strings, plus
``nvidia.com/gpu`` from ``spec.resource_requirements``), hardened by the operator's
``PodSettings`` (``pod_template``). Intent is ``spec.operatingMode`` on v1beta1 and
``spec.replicas`` on v1alpha1; the version of an existing object is read from its own
``apiVersion``, never assumed.

**Reading.** An object we did not label ``managed-by=shellgate``, or that has no sandbox id,
is not ours and yields no snapshot. ``metadata.resourceVersion`` read as a decimal integer is
the snapshot's revision; anything else (kmock assigns none) is ``None``, which the reconciler
applies in arrival order, unguarded. The snapshot also carries the spec's intent,
``metadata.generation``, each condition's ``observedGeneration`` and (v1alpha1)
``status.replicas``, from which the phase logic tells a current status from one written for
an older spec. The pod facts come from ``status``: the pod is named by
the ``agents.x-k8s.io/pod-name`` annotation, else after the object, and is reported only while
``status`` shows one (an IP, a node, or a ``PodScheduled`` condition).
"""

from __future__ import annotations

import copy
import datetime
import decimal
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import PlatformEvent
from shellgate.reconcilers.phase import COMPLETED, ERROR, STOPPING, derive_backend_phase
from shellgate.reconcilers.pod_policy import PodSettings
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot, InstanceFacts

Body = dict[str, Any]
"""A Kubernetes object as decoded JSON."""

GROUP = "agents.x-k8s.io"
PLURAL = "sandboxes"
KIND = "Sandbox"
V1BETA1 = "v1beta1"
V1ALPHA1 = "v1alpha1"
SUPPORTED_VERSIONS = (V1BETA1, V1ALPHA1)
"""In order of preference."""

SANDBOX_ID_LABEL = "openshell.ai/sandbox-id"
MANAGED_BY_LABEL = "openshell.ai/managed-by"
MANAGED_BY = "shellgate"
GATEWAY_ID_LABEL = "openshell.ai/gateway-id"
DEFAULT_WORKSPACE = "default"
MAX_OBJECT_NAME = 63
"""Object names stay DNS labels in length: the pod and any Service are named after them."""
HASH_CHARS = 10
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
POD_NAME_ANNOTATION = "agents.x-k8s.io/pod-name"
CONTAINER_NAME = "sandbox"
GPU_RESOURCE = "nvidia.com/gpu"

RUNNING, SUSPENDED = "Running", "Suspended"
REPORTED_CONDITIONS = ("Ready", "Suspended", "PodScheduled", "Finished")
"""The agent-sandbox conditions a snapshot carries (docs/kubernetes.md lists them); others
are ignored, so a condition type added upstream changes nothing until we choose to read it."""


RESTART_POLICIES: dict[int, str] = {
    openshell_pb2.SANDBOX_RESTART_POLICY_NEVER: "Never",
    openshell_pb2.SANDBOX_RESTART_POLICY_ON_FAILURE: "OnFailure",
    openshell_pb2.SANDBOX_RESTART_POLICY_ALWAYS: "Always",
}
"""``spec.restart_policy`` as a pod ``restartPolicy``; unspecified is ``Never``."""


class ManifestError(ValueError):
    """The sandbox cannot be expressed as a ``Sandbox`` object (for example: no image)."""


# ---- writing -------------------------------------------------------------------------------


def api_version(version: str) -> str:
    return f"{GROUP}/{version}"


def collection_path(version: str, namespace: str) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/{PLURAL}"


def object_path(body: Body) -> str:
    """The URL path of an existing object, at the version the object itself reports."""
    meta = body.get("metadata", {})
    group_version = str(body.get("apiVersion") or api_version(V1BETA1))
    return f"/apis/{group_version}/namespaces/{meta.get('namespace', '')}/{PLURAL}/{meta['name']}"


def object_name(workspace: str, name: str) -> str:
    """The ``Sandbox`` object's name: ``{workspace}--{name}``, hashed when that is too long.

    Names are unique per workspace only, so the workspace is part of the object's name; the
    same name in two workspaces gets two objects. agent-sandbox names the pod after the object
    and adopts an unowned pod of that name, so the name must also never be one the caller
    picks freely: a bare sandbox name could be the gateway's own pod's. The result is a
    DNS-1123 subdomain of at most ``MAX_OBJECT_NAME`` characters; a longer one keeps a readable
    start and ends in a hash of the full pair, so distinct pairs stay distinct. A workspace
    that itself contains ``--`` is always hashed: ``a--b`` + ``c`` and ``a`` + ``b--c`` would
    otherwise both be ``a--b--c``.
    """
    workspace = workspace or DEFAULT_WORKSPACE
    plain = f"{workspace}--{name}"
    if len(plain) <= MAX_OBJECT_NAME and "--" not in workspace:
        return plain
    digest = hashlib.sha256(f"{workspace}/{name}".encode()).hexdigest()[:HASH_CHARS]
    head = plain[: MAX_OBJECT_NAME - HASH_CHARS - 1].rstrip("-.")
    return f"{head}-{digest}"


def sandbox_object(
    sandbox: openshell_pb2.Sandbox,
    *,
    version: str,
    namespace: str,
    default_image: str,
    settings: PodSettings | None = None,
) -> Body:
    """The ``Sandbox`` object that runs ``sandbox`` (see the module docstring)."""
    settings = settings or PodSettings()
    meta = sandbox.metadata
    labels = {
        SANDBOX_ID_LABEL: meta.id,
        MANAGED_BY_LABEL: MANAGED_BY,
        GATEWAY_ID_LABEL: settings.gateway_id,
    }
    spec: Body = {"podTemplate": pod_template(sandbox, labels, default_image, settings)}
    if version == V1ALPHA1:
        spec["replicas"] = 1
    else:
        spec["operatingMode"] = RUNNING
    return {
        "apiVersion": api_version(version),
        "kind": KIND,
        "metadata": {
            "name": object_name(meta.workspace, meta.name),
            "namespace": namespace,
            "labels": labels,
        },
        "spec": spec,
    }


def pod_template(
    sandbox: openshell_pb2.Sandbox,
    labels: Mapping[str, str],
    image: str,
    settings: PodSettings | None = None,
) -> Body:
    """``spec.podTemplate``: the template's labels and annotations plus ours, one container.

    The pod is hardened whatever the caller sends: no service-account token (a sandbox runs
    untrusted code and must not hold the namespace's credentials), the operator's security
    contexts (``restricted``-compatible by default), and a restart policy from the spec
    (``Never`` unless asked, so an exited command completes instead of restarting in a loop).
    Runtime class and ``hostUsers`` pass only when the operator's policy allows them, which
    the driver checks before it builds anything.
    """
    settings = settings or PodSettings()
    template = sandbox.spec.template
    pod_spec: Body = {
        "restartPolicy": RESTART_POLICIES.get(sandbox.spec.restart_policy, "Never"),
        "automountServiceAccountToken": False,
        "containers": [container(sandbox, image, settings)],
    }
    if settings.pod_security_context:
        pod_spec["securityContext"] = copy.deepcopy(dict(settings.pod_security_context))
    if template.runtime_class_name:
        pod_spec["runtimeClassName"] = template.runtime_class_name
    if template.HasField("user_namespaces"):
        pod_spec["hostUsers"] = not template.user_namespaces
    metadata: Body = {"labels": {**template.labels, **labels}}
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    return {"metadata": metadata, "spec": pod_spec}


def container(
    sandbox: openshell_pb2.Sandbox, default_image: str, settings: PodSettings | None = None
) -> Body:
    settings = settings or PodSettings()
    spec = sandbox.spec
    image = spec.template.image or default_image
    if not image:
        raise ManifestError(
            "the sandbox names no image (spec.template.image) and the gateway has no "
            "--sandbox-image"
        )
    built: Body = {"name": CONTAINER_NAME, "image": image}
    if spec.command:
        built["command"] = list(spec.command)
    env = {**spec.template.environment, **spec.environment}
    if env:
        built["env"] = [{"name": name, "value": env[name]} for name in sorted(env)]
    resources = container_resources(spec)
    if resources:
        built["resources"] = resources
    if settings.container_security_context:
        built["securityContext"] = copy.deepcopy(dict(settings.container_security_context))
    if spec.tty:
        built["tty"] = True
        built["stdin"] = True  # Kubernetes requires stdin for a TTY
    return built


def container_resources(spec: openshell_pb2.SandboxSpec) -> Body:
    """``spec.template.resources`` with quantities as strings, plus the GPU count as an
    extended-resource limit.

    The template's resources arrive as a protobuf ``Struct``, where every number is a double:
    ``cpu: 0.5`` would reach the API server as the float 0.5, which the CRD's int-or-string
    check refuses. Quantities are therefore sent as their decimal strings ("0.5", "2").
    """
    resources: Body = {}
    if spec.template.HasField("resources"):
        resources = json_format.MessageToDict(spec.template.resources)
        for key in ("limits", "requests"):
            if isinstance(resources.get(key), dict):
                resources[key] = {k: quantity(v) for k, v in resources[key].items()}
    gpu = spec.resource_requirements.gpu
    if spec.resource_requirements.HasField("gpu") and gpu.HasField("count") and gpu.count:
        limits = dict(resources.get("limits") or {})
        limits[GPU_RESOURCE] = str(gpu.count)
        resources["limits"] = limits
    return resources


def resource_capabilities() -> openshell_pb2.ResourceCapabilities:
    """What ``container_resources`` honours of a spec, as GetGatewayInfo reports it: CPU and
    memory limits (the template's resources reach the container as they are) and a GPU
    count. A GPU request without a count adds nothing, so no default device selection is
    offered."""
    return openshell_pb2.ResourceCapabilities(
        cpu=openshell_pb2.CpuResourceCapabilities(limit_supported=True),
        memory=openshell_pb2.MemoryResourceCapabilities(limit_supported=True),
        gpu=openshell_pb2.GpuResourceCapabilities(count_selection_supported=True),
    )


def quantity(value: object) -> object:
    """A number as a Kubernetes quantity string; anything else as given (the API server
    judges it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return format(decimal.Decimal(repr(value)), "f")


def lifecycle_patch(body: Body, *, running: bool) -> Body | None:
    """The merge patch that starts or stops ``body``; None when it is already so.

    v1beta1 sets ``spec.operatingMode`` (Running / Suspended), v1alpha1 ``spec.replicas``
    (1 / 0), chosen by the object's own ``apiVersion``. The patch carries the object's
    ``metadata.resourceVersion`` when it has one: a real API server then refuses it with 409
    if the object changed since it was read, and the caller reads again.
    """
    spec = body.get("spec") or {}
    patch_spec: Body
    if version_of(body) == V1ALPHA1:
        wanted_replicas = 1 if running else 0
        if spec.get("replicas", 1) == wanted_replicas:
            return None
        patch_spec = {"replicas": wanted_replicas}
    else:
        mode = RUNNING if running else SUSPENDED
        if spec.get("operatingMode", RUNNING) == mode:
            return None
        patch_spec = {"operatingMode": mode}
    patch: Body = {"spec": patch_spec}
    resource_version = body.get("metadata", {}).get("resourceVersion")
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch


def start_patch(body: Body) -> Body | None:
    """The merge patch a start sends to ``body``; None when there is nothing to do.

    A stopped object is set running. A running object whose pod has ended (failed, evicted,
    or succeeded) is stopped first: agent-sandbox never replaces an ended pod, so only a stop
    (the controller deletes the pod) and then a start (it creates a new one) runs the sandbox
    again. The reconcile loop sends the second half once the stop is confirmed; until then
    (the old pod is still terminating) a start changes nothing, since running the object
    again then would let the controller find the old pod once more.
    """
    snapshot = snapshot_of(body)
    backend = derive_backend_phase(snapshot) if snapshot is not None else None
    if not desired_running(body):
        return None if backend == STOPPING else lifecycle_patch(body, running=True)
    if backend in (ERROR, COMPLETED):
        return lifecycle_patch(body, running=False)
    return None


# ---- reading -------------------------------------------------------------------------------


def version_of(body: Body) -> str:
    """The agent-sandbox version an object reports (v1beta1 when it says nothing)."""
    return str(body.get("apiVersion", "")).rpartition("/")[2] or V1BETA1


def is_managed(body: Body) -> bool:
    labels = body.get("metadata", {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SANDBOX_ID_LABEL))


def belongs_to(body: Body, gateway_id: str) -> bool:
    """An object of this installation: labelled with its gateway id, or with none at all.

    Several installations may share a namespace; each acts only on its own objects. Objects
    written before installations were labelled carry no gateway id; they can only be from the
    one installation that used the namespace then, which keeps them.
    """
    labels = body.get("metadata", {}).get("labels") or {}
    return str(labels.get(GATEWAY_ID_LABEL, gateway_id)) == gateway_id


def labelled_for(body: Body, gateway_id: str) -> bool:
    """Labelled with exactly this installation's gateway id (no label does not count)."""
    labels = body.get("metadata", {}).get("labels") or {}
    return str(labels.get(GATEWAY_ID_LABEL, "")) == gateway_id


def sandbox_id_of(body: Body) -> str | None:
    """The sandbox id of an object we manage; None for anything else."""
    if not is_managed(body):
        return None
    return str(body["metadata"]["labels"][SANDBOX_ID_LABEL])


def revision_of(body: Body) -> int | None:
    raw = body.get("metadata", {}).get("resourceVersion")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if raw >= 0 else None
    if isinstance(raw, str) and raw.isascii() and raw.isdecimal():
        return int(raw)
    return None


def snapshot_of(body: Body) -> DriverSnapshot | None:
    """What the driver reports about one object; None when the object is not ours."""
    sandbox_id = sandbox_id_of(body)
    if sandbox_id is None:
        return None
    status = body.get("status") or {}
    return DriverSnapshot(
        sandbox_id=sandbox_id,
        revision=revision_of(body),
        conditions=conditions_of(status),
        deleting=bool(body.get("metadata", {}).get("deletionTimestamp")),
        has_status=bool(status),
        instance=instance_of(body),
        generation=_count(body.get("metadata", {}).get("generation")) or None,
        desired_running=desired_running(body),
        workload_count=workload_count(body),
    )


def desired_running(body: Body) -> bool:
    """What the spec asks for: v1beta1 ``operatingMode`` (Running by default), v1alpha1
    ``replicas`` (1 by default)."""
    spec = body.get("spec") or {}
    if version_of(body) == V1ALPHA1:
        return _count(spec.get("replicas", 1)) != 0
    return str(spec.get("operatingMode", RUNNING)) != SUSPENDED


def workload_count(body: Body) -> int | None:
    """v1alpha1 ``status.replicas`` (omitted by the controller when 0); None on v1beta1,
    which has no such field, and before the controller wrote any status."""
    status = body.get("status") or {}
    if version_of(body) != V1ALPHA1 or not status:
        return None
    return _count(status.get("replicas", 0))


def _count(raw: object) -> int:
    """A non-negative integer field; anything else reads as 0."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    return 0


def conditions_of(status: Body) -> tuple[DriverCondition, ...]:
    found = []
    for raw in status.get("conditions") or ():
        if not isinstance(raw, dict) or raw.get("type") not in REPORTED_CONDITIONS:
            continue
        found.append(
            DriverCondition(
                type=str(raw["type"]),
                status=str(raw.get("status", "Unknown")),
                reason=str(raw.get("reason") or ""),
                message=str(raw.get("message") or ""),
                last_transition_time_ms=time_ms(raw.get("lastTransitionTime")),
                observed_generation=_count(raw.get("observedGeneration")),
            )
        )
    return tuple(found)


def pod_name_of(body: Body) -> str:
    meta = body.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return str(annotations.get(POD_NAME_ANNOTATION) or meta.get("name", ""))


def instance_of(body: Body) -> InstanceFacts:
    status = body.get("status") or {}
    ips = tuple(_pod_ips(status.get("podIPs") or ()))
    node = str(status.get("nodeName") or "")
    scheduled = any(
        isinstance(c, dict) and c.get("type") == "PodScheduled"
        for c in status.get("conditions") or ()
    )
    if not (ips or node or scheduled):
        return InstanceFacts()
    return InstanceFacts(pod_name=pod_name_of(body), pod_ips=ips, node_name=node)


def _pod_ips(raw: Sequence[Any]) -> list[str]:
    """agent-sandbox reports plain strings; a Pod reports ``{"ip": ...}``; accept both."""
    ips = []
    for item in raw:
        ip = item.get("ip") if isinstance(item, dict) else item
        if isinstance(ip, str) and ip:
            ips.append(ip)
    return ips


def time_ms(raw: object) -> int:
    """An RFC 3339 timestamp in milliseconds since the epoch; 0 when absent or unreadable."""
    if not isinstance(raw, str) or not raw:
        return 0
    try:
        parsed = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp() * 1000)


# ---- core Events -----------------------------------------------------------------------------


def involved_object(event: Body) -> tuple[str, str] | None:
    """``("Sandbox" | "Pod", name)`` for an Event about one of those kinds, else None."""
    involved = event.get("involvedObject") or event.get("regarding") or {}
    kind = involved.get("kind")
    name = involved.get("name")
    group = str(involved.get("apiVersion", "")).rpartition("/")[0]
    if not name:
        return None
    if kind == KIND and group in (GROUP, ""):
        return KIND, str(name)
    if kind == "Pod" and group == "":
        return "Pod", str(name)
    return None


def platform_event_of(event: Body, sandbox_id: str) -> PlatformEvent:
    """A core ``Event`` as a platform event of ``sandbox_id``."""
    meta = event.get("metadata", {})
    when = (
        time_ms(event.get("lastTimestamp"))
        or time_ms(event.get("eventTime"))
        or time_ms(event.get("firstTimestamp"))
        or time_ms(meta.get("creationTimestamp"))
    )
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    count = event.get("count") or (event.get("series") or {}).get("count") or 1
    return PlatformEvent(
        sandbox_id=sandbox_id,
        type=str(event.get("type") or "Normal"),
        reason=str(event.get("reason") or ""),
        message=str(event.get("message") or event.get("note") or ""),
        timestamp_ms=when,
        source=str(component),
        count=int(count) if isinstance(count, int) else 1,
    )


def event_identity(event: Body) -> tuple[str, ...]:
    """What tells one delivery of an Event from a repeat of the same delivery.

    A relist replays every Event still stored; the same identity means "already published".
    An Event that fires again bumps its count and time, so it gets a new identity.
    """
    meta = event.get("metadata", {})
    return (
        str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        str(meta.get("resourceVersion") or ""),
        str(event.get("count") or ""),
        str(event.get("lastTimestamp") or event.get("eventTime") or ""),
    )


def choose_version(served: Iterable[str]) -> str | None:
    """v1beta1 when the API serves it, else v1alpha1, else None (agent-sandbox is missing)."""
    available = set(served)
    return next((v for v in SUPPORTED_VERSIONS if v in available), None)
