"""A model of the status the agent-sandbox controller writes, release by release.

No real controller runs in the tests, so this stands in for one. It was written from reading
kubernetes-sigs/agent-sandbox (``controllers/sandbox_controller.go`` and ``api/*/sandbox_types.go``
at the tags v0.4.6, v0.5.0, v0.5.3, v0.5.4 and v0.5.6); it is a description of the observable
behaviour, not a port of the code. What each release writes:

- **v0.4.x** (``v1alpha1``, intent ``spec.replicas``): a ``Ready`` condition on every pass and
  ``Finished`` while the pod has succeeded or failed; ``status.replicas`` 1 while a pod exists
  (0, omitted, otherwise). With ``replicas: 0`` it deletes the pod and from then on looks at no
  pod at all, reporting ``Ready=True/DependenciesReady`` "Pod does not exist, replicas is 0"
  even while the pod is still terminating. No ``Suspended`` condition exists.
- **v0.5.0-v0.5.3** (``v1beta1``, intent ``spec.operatingMode``): like v0.4 for a running
  object, without ``status.replicas``. Suspended, it deletes the pod, reports
  ``Ready=False/SandboxSuspended`` and ``Suspended=True/PodTerminated`` at once, and never
  writes ``Suspended`` again once running: the ``True`` stays behind after a resume.
- **v0.5.4+**: ``Suspended`` on every pass (``False/NotSuspended`` while running,
  ``False/PodTerminating`` while the pod goes, ``True/PodTerminated`` once gone), and
  ``Ready=False`` with ``PodSucceeded`` / ``PodFailed`` for an ended pod.

Every release stamps each condition it writes with ``observedGeneration`` and keeps a
condition's ``lastTransitionTime`` while its status does not change. A pod the controller
cannot create (Pod Security, quota, a name clash) is ``Ready=False/ReconcilerError`` with
"Error seen: <the API server's message>".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

Release = Literal["v0.4", "v0.5.0", "v0.5.4"]
RELEASES: tuple[Release, ...] = ("v0.4", "v0.5.0", "v0.5.4")
PodState = Literal["absent", "pending", "ready", "failed", "succeeded", "terminating"]
API_VERSION = {"v0.4": "agents.x-k8s.io/v1alpha1"}
ROOT = "agents.x-k8s.io/v1beta1"


def api_version(release: Release) -> str:
    return API_VERSION.get(release, ROOT)


@dataclass
class ModelController:
    """One ``Sandbox`` object, its pod, and the controller's view of them."""

    release: Release
    body: dict[str, Any]
    pod: PodState = "absent"
    refusal: str = ""
    """The API server's refusal of the pod, when it refuses (then no pod is created)."""
    clock: int = 0
    linger: bool = False
    ended_before: PodState | None = None
    _times: dict[str, tuple[str, str]] = field(default_factory=dict)

    # ---- the API server's side ----------------------------------------------------------

    def apply_spec_patch(self, patch: dict[str, Any] | None) -> None:
        """A merge patch from the driver; a spec change bumps the generation."""
        if not patch:
            return
        spec_patch = patch.get("spec") or {}
        spec = self.body.setdefault("spec", {})
        changed = any(spec.get(k) != v for k, v in spec_patch.items())
        spec.update(spec_patch)
        if changed:
            meta = self.body.setdefault("metadata", {})
            meta["generation"] = int(meta.get("generation", 1)) + 1
        self._bump()

    def _bump(self) -> None:
        meta = self.body.setdefault("metadata", {})
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "100")) + 1)

    # ---- the controller's pass ----------------------------------------------------------

    @property
    def running_wanted(self) -> bool:
        spec = self.body.get("spec") or {}
        if self.release == "v0.4":
            return int(spec.get("replicas", 1)) != 0
        return spec.get("operatingMode", "Running") != "Suspended"

    def reconcile(self) -> dict[str, Any]:
        """One controller pass: act on the pod, write the status; returns the object.

        Deleting a pod that has ended (failed, succeeded) is normally immediate, since there is
        no container left to stop; ``linger`` keeps it around, terminating, until ``pod_gone``.
        A running pod always terminates first.
        """
        if self.running_wanted and self.pod == "absent" and not self.refusal:
            self.pod = "pending"
        if not self.running_wanted and self.pod not in ("absent", "terminating"):
            ended = self.pod in ("failed", "succeeded")
            self.ended_before = self.pod if ended else None
            self.pod = "absent" if ended and not self.linger else "terminating"
        self._write_status()
        self._bump()
        return copy.deepcopy(self.body)

    def pod_gone(self) -> dict[str, Any]:
        """The kubelet finished deleting the pod; the controller sees it (owned-pod watch)."""
        self.pod = "absent"
        self.ended_before = None
        return self.reconcile()

    def set_pod(self, state: PodState) -> dict[str, Any]:
        self.pod = state
        return self.reconcile()

    def _visible_pod(self) -> PodState:
        """The pod as this release's status logic sees it."""
        if not self.running_wanted and self.release in ("v0.4", "v0.5.0"):
            return "absent"  # these releases stop looking once the pod is asked to go
        if self.running_wanted and self.pod == "terminating" and self.ended_before:
            return self.ended_before  # running again, it finds the old ended pod by name
        return self.pod

    def _write_status(self) -> None:
        status = self.body.setdefault("status", {})
        conditions = {c["type"]: c for c in status.get("conditions") or ()}
        pod = self._visible_pod()
        written = self._conditions(pod)
        if "Finished" not in written:
            conditions.pop("Finished", None)
        for type_, (state, reason, message) in written.items():
            conditions[type_] = self._condition(type_, state, reason, message, conditions)
        status["conditions"] = list(conditions.values())
        if self.release == "v0.4":
            if pod == "absent":
                status.pop("replicas", None)  # omitempty: 0 is not written
            else:
                status["replicas"] = 1
        if pod == "ready":
            status["podIPs"] = ["10.0.0.9"]
        else:
            status.pop("podIPs", None)

    def _conditions(self, pod: PodState) -> dict[str, tuple[str, str, str]]:
        written: dict[str, tuple[str, str, str]] = {}
        suspended = self._suspended(pod)
        if suspended is not None:
            written["Suspended"] = suspended
        if pod in ("failed", "succeeded"):
            reason = "PodFailed" if pod == "failed" else "PodSucceeded"
            written["Finished"] = ("True", reason, f"pod {pod}")
        written["Ready"] = self._ready(pod)
        return written

    def _suspended(self, pod: PodState) -> tuple[str, str, str] | None:
        if self.release == "v0.4":
            return None
        if self.running_wanted:
            if self.release == "v0.5.0":
                return None  # never written while running: an old True stays
            return ("False", "NotSuspended", "Sandbox is not suspended")
        if pod == "absent":
            return ("True", "PodTerminated", "Pod has been terminated")
        return ("False", "PodTerminating", "Pod is terminating. Sandbox is suspending")

    def _ready(self, pod: PodState) -> tuple[str, str, str]:
        if self.refusal and self.running_wanted:
            return ("False", "ReconcilerError", f"Error seen: {self.refusal}")
        if not self.running_wanted:
            if self.release == "v0.4":
                return ("True", "DependenciesReady", "Pod does not exist, replicas is 0")
            message = "Sandbox is suspended" if pod == "absent" else "Sandbox is suspending"
            return ("False", "SandboxSuspended", message)
        if self.release == "v0.5.4" and pod in ("failed", "succeeded"):
            return ("False", "PodFailed" if pod == "failed" else "PodSucceeded", f"pod {pod}")
        if pod == "ready":
            return ("True", "DependenciesReady", "Pod is Ready")
        if pod == "absent":
            return ("False", "DependenciesNotReady", "Pod does not exist")
        phase = {"pending": "Pending", "failed": "Failed", "succeeded": "Succeeded"}.get(
            pod, "Running"
        )
        return ("False", "DependenciesNotReady", f"Pod exists with phase: {phase}")

    def _condition(
        self,
        type_: str,
        state: str,
        reason: str,
        message: str,
        previous: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        old = previous.get(type_)
        self.clock += 1
        since = old["lastTransitionTime"] if old and old["status"] == state else self._time()
        return {
            "type": type_,
            "status": state,
            "reason": reason,
            "message": message,
            "observedGeneration": int(self.body["metadata"].get("generation", 1)),
            "lastTransitionTime": since,
        }

    def _time(self) -> str:
        return f"2026-05-01T10:{self.clock // 60:02d}:{self.clock % 60:02d}Z"
