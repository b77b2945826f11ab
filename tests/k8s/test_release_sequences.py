"""Each agent-sandbox release's condition sequences, replayed through the phase logic.

Pure: no emulator, no store. ``Replay`` plays the gateway (``decide`` on the row, the
driver's patches from ``manifest``) against ``ModelController``, which writes the status a
given release writes (see ``tests/support/agent_sandbox_model.py`` for what each release does
and where that was learned). Every watch event the gateway would get is fed to ``decide``:
the object right after the driver's own patch (conditions still from the old spec) as well as
after each controller pass.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.controller.drivers.kubernetes.manifest import (
    lifecycle_patch,
    sandbox_object,
    snapshot_of,
    start_patch,
)
from shellgate.reconcilers.sandbox import begin_start, begin_stop
from shellgate.reconcilers.sandbox_sync import (
    CallDriver,
    Reported,
    Row,
    Thresholds,
    Write,
    decide,
)
from tests.support.agent_sandbox_model import RELEASES, ModelController, Release
from tests.support.objects import sandbox as sandbox_message

DEADLINE_MS = 600_000
REFUSAL = (
    'pods "default--refused" is forbidden: violates PodSecurity "restricted:latest": '
    "allowPrivilegeEscalation != false"
)


class Replay:
    """The gateway's side of one sandbox, driven by hand, one event at a time."""

    def __init__(self, release: Release, name: str = "seq") -> None:
        message = sandbox_message(name)
        version = "v1alpha1" if release == "v0.4" else "v1beta1"
        body = sandbox_object(message, version=version, namespace="ns", default_image="img:1")
        body["metadata"].update({"generation": 1, "resourceVersion": "100"})
        self.model = ModelController(release, body)
        self.row = message
        self.now = 1_000_000
        self.thresholds = Thresholds(300_000, 60_000, DEADLINE_MS)
        self.driver_calls: list[str] = []

    @property
    def phase(self) -> str:
        return P.SandboxPhase.Name(self.row.status.phase).removeprefix("SANDBOX_PHASE_")

    def observe(self, body: dict[str, Any], *, resync: bool = False) -> None:
        snapshot = snapshot_of(body)
        assert snapshot is not None
        action = decide(
            Row(self.row, 1, self.now),
            Reported(snapshot, resync=resync),
            self.now,
            self.thresholds,
            acts_on_intent=False,
        )
        if isinstance(action, Write):
            self.row = action.candidate
            if action.then is not None:
                self.call_driver(action.then.verb)
        elif isinstance(action, CallDriver):
            self.call_driver(action.verb)

    def call_driver(self, verb: str) -> None:
        """What ``KubernetesDriver.start_sandbox`` / ``stop_sandbox`` send; the watch then
        delivers the patched object before the controller has looked at it."""
        self.driver_calls.append(verb)
        body = self.model.body
        patch = start_patch(body) if verb == "start" else lifecycle_patch(body, running=False)
        if patch is None:
            return
        self.model.apply_spec_patch(patch)
        self.observe(copy.deepcopy(self.model.body))

    def controller_pass(self) -> None:
        self.observe(self.model.reconcile())

    def pod(self, state: Any) -> None:
        self.observe(self.model.set_pod(state))

    def pod_gone(self) -> None:
        self.observe(self.model.pod_gone())

    def user_stop(self) -> None:
        self.row = begin_stop()(self.row)
        self.call_driver("stop")

    def user_start(self) -> None:
        self.row = begin_start()(self.row)
        self.call_driver("start")

    def create_until_ready(self) -> None:
        self.controller_pass()
        assert self.phase == "PROVISIONING"
        self.pod("ready")
        assert self.phase == "READY"

    def stop_until_stopped(self) -> None:
        self.user_stop()
        assert self.phase == "STOPPING"  # our own patch: conditions still from before it
        self.controller_pass()
        if self.model.release == "v0.5.4":
            assert self.phase == "STOPPING"  # Suspended=False/PodTerminating
        self.pod_gone()
        assert self.phase == "STOPPED"


@pytest.mark.parametrize("release", RELEASES)
def test_create_ends_ready(release: Release) -> None:
    replay = Replay(release)
    replay.create_until_ready()
    replay.controller_pass()  # a later pass changes nothing
    assert replay.phase == "READY"


@pytest.mark.parametrize("release", RELEASES)
def test_stop_ends_stopped(release: Release) -> None:
    replay = Replay(release)
    replay.create_until_ready()
    replay.stop_until_stopped()
    replay.controller_pass()
    assert replay.phase == "STOPPED"


@pytest.mark.parametrize("release", RELEASES)
def test_start_after_stop_ends_ready_and_stays_there(release: Release) -> None:
    replay = Replay(release)
    replay.create_until_ready()
    replay.stop_until_stopped()
    replay.user_start()
    assert replay.phase == "STARTING"  # the stale Suspended / Ready of the stop do not count
    replay.controller_pass()
    assert replay.phase == "STARTING"
    replay.pod("ready")
    assert replay.phase == "READY"
    if release == "v0.5.0":  # the old Suspended=True is still in the status
        conditions = replay.model.body["status"]["conditions"]
        assert {"Suspended": "True"}.items() <= {c["type"]: c["status"] for c in conditions}.items()
    replay.controller_pass()
    replay.observe(copy.deepcopy(replay.model.body), resync=True)
    assert replay.phase == "READY"


@pytest.mark.parametrize("release", RELEASES)
def test_a_second_stop_waits_for_the_new_confirmation(release: Release) -> None:
    """v0.5.0-v0.5.3 leave Suspended=True from the first stop; the second must not end on it."""
    replay = Replay(release)
    replay.create_until_ready()
    replay.stop_until_stopped()
    replay.user_start()
    replay.pod("ready")
    replay.stop_until_stopped()


@pytest.mark.parametrize("release", RELEASES)
def test_an_evicted_pod_is_error_and_start_runs_a_new_pod(release: Release) -> None:
    replay = Replay(release)
    replay.create_until_ready()
    replay.pod("failed")
    assert replay.phase == "ERROR"
    replay.user_start()
    assert replay.phase == "STARTING"
    assert not replay.model.running_wanted  # the ended pod is stopped first
    replay.controller_pass()  # deletes the pod; a failed pod has no container to wait for
    assert replay.model.running_wanted  # the confirmed stop woke the start up
    assert replay.driver_calls.count("start") == 2
    replay.controller_pass()
    assert replay.phase == "STARTING"
    replay.pod("ready")
    assert replay.phase == "READY"


@pytest.mark.parametrize("release", RELEASES)
def test_a_command_that_exits_successfully_completes(release: Release) -> None:
    replay = Replay(release)
    replay.create_until_ready()
    replay.pod("succeeded")
    assert replay.phase == "COMPLETED"


@pytest.mark.parametrize("release", RELEASES)
def test_a_refused_pod_is_error_at_the_deadline_with_the_controllers_reason(
    release: Release,
) -> None:
    replay = Replay(release, "refused")
    replay.model.refusal = REFUSAL
    replay.controller_pass()
    assert replay.phase == "PROVISIONING"
    replay.now += DEADLINE_MS - 1
    replay.observe(copy.deepcopy(replay.model.body), resync=True)
    assert replay.phase == "PROVISIONING"
    replay.now += 1
    replay.observe(copy.deepcopy(replay.model.body), resync=True)
    assert replay.phase == "ERROR"
    ready = next(c for c in replay.row.status.conditions if c.type == "Ready")
    assert ready.reason == "ReconcilerError"
    assert "violates PodSecurity" in ready.message
    assert not replay.row.status.HasField("provisioning")  # the deadline is cleared
    replay.controller_pass()  # later events keep it ERROR
    assert replay.phase == "ERROR"


@pytest.mark.parametrize("release", RELEASES)
def test_a_slow_start_is_not_recycled_by_a_reissued_start(release: Release) -> None:
    """A start re-issued while the pod is still pending must not stop it again."""
    replay = Replay(release)
    replay.create_until_ready()
    replay.stop_until_stopped()
    replay.user_start()
    replay.controller_pass()
    generation = replay.model.body["metadata"]["generation"]
    replay.call_driver("start")
    assert replay.model.body["metadata"]["generation"] == generation
    assert replay.phase == "STARTING"


@pytest.mark.parametrize("release", RELEASES)
def test_an_ended_pod_that_lingers(release: Release) -> None:
    """The failed pod takes a while to go. v0.5.4+ report it terminating, and the start waits;
    v0.4 and v0.5.0-v0.5.3 confirm the stop at once, the start goes on, the controller finds
    the old pod again and the sandbox is ERROR once more (a known limit of those releases)."""
    replay = Replay(release)
    replay.create_until_ready()
    replay.pod("failed")
    replay.model.linger = True
    replay.user_start()
    replay.controller_pass()
    if release != "v0.5.4":
        assert replay.model.running_wanted  # the stop was confirmed with the pod still there
        replay.controller_pass()
        assert replay.phase == "ERROR"
        return
    assert replay.phase == "STARTING" and not replay.model.running_wanted
    replay.call_driver("start")  # a re-issued start must not run it before the pod is gone
    assert not replay.model.running_wanted
    replay.pod_gone()
    assert replay.model.running_wanted
    replay.controller_pass()
    replay.pod("ready")
    assert replay.phase == "READY"
