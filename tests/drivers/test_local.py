"""LocalDriver against real child processes: lifecycle, events, ownership, restart, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from shellgate.api import openshell_pb2
from shellgate.controller.drivers import (
    DeletedEvent,
    DriverError,
    DriverEvent,
    LocalDriver,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.drivers.base import DriverNotOwner
from shellgate.controller.drivers.fanout import Subscription
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

pytestmark = pytest.mark.timeout(10)
WAIT_S = 2.0  # the longest any single expected event may take

IGNORE_TERM = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()",
]


def make_sandbox(
    command: list[str] | None = None,
    *,
    sandbox_id: str | None = None,
    env: dict[str, str] | None = None,
    template_env: dict[str, str] | None = None,
) -> openshell_pb2.Sandbox:
    message = openshell_pb2.Sandbox()
    message.metadata.id = sandbox_id or str(uuid.uuid4())
    message.metadata.name = f"sb-{message.metadata.id[:8]}"
    message.spec.command.extend(command or [])
    message.spec.environment.update(env or {})
    message.spec.template.environment.update(template_env or {})
    return message


def condition(snapshot: DriverSnapshot, type_: str) -> DriverCondition:
    return next(c for c in snapshot.conditions if c.type == type_)


def pid_of(snapshot: DriverSnapshot) -> int:
    assert snapshot.instance.pod_name.startswith("local-")
    return int(snapshot.instance.pod_name.removeprefix("local-"))


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (PID 1 here may not reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


async def gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def next_event(
    events: AsyncIterator[DriverEvent],
    predicate: Callable[[DriverEvent], bool],
) -> DriverEvent:
    async def find() -> DriverEvent:
        async for event in events:
            if predicate(event):
                return event
        raise AssertionError("the event stream ended")

    return await asyncio.wait_for(find(), WAIT_S)


async def events_until(
    events: AsyncIterator[DriverEvent],
    predicate: Callable[[DriverEvent], bool],
) -> list[DriverEvent]:
    """Every event up to and including the first that matches ``predicate``."""
    seen: list[DriverEvent] = []

    async def collect() -> list[DriverEvent]:
        async for event in events:
            seen.append(event)
            if predicate(event):
                return seen
        raise AssertionError("the event stream ended")

    return await asyncio.wait_for(collect(), WAIT_S)


def ready(status: str, reason: str | None = None) -> Callable[[DriverEvent], bool]:
    def match(event: DriverEvent) -> bool:
        if not isinstance(event, SnapshotEvent):
            return False
        cond = condition(event.snapshot, "Ready")
        return cond.status == status and (reason is None or cond.reason == reason)

    return match


def revisions_of(events: list[DriverEvent]) -> list[int]:
    revisions = [e.snapshot.revision for e in events if isinstance(e, SnapshotEvent)]
    assert all(isinstance(r, int) for r in revisions)
    return [r for r in revisions if r is not None]


def drain(events: AsyncIterator[DriverEvent]) -> list[DriverEvent]:
    """Everything already queued on a subscription, without waiting."""
    assert isinstance(events, Subscription)
    return events.drain()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def driver(state_dir: Path) -> AsyncIterator[LocalDriver]:
    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    await d.start()
    yield d
    await d.close()


@pytest.fixture
def environ_secret() -> Iterator[str]:
    os.environ["SHELLGATE_TEST_SECRET"] = "do-not-leak"
    yield "SHELLGATE_TEST_SECRET"
    del os.environ["SHELLGATE_TEST_SECRET"]


async def test_create_reports_ready_with_the_pid(driver: LocalDriver, state_dir: Path) -> None:
    events = driver.events()
    sb = make_sandbox()
    await driver.create_sandbox(sb)

    event = await next_event(events, ready("True"))
    assert isinstance(event, SnapshotEvent)
    snap = event.snapshot
    pid = pid_of(snap)
    assert snap.sandbox_id == sb.metadata.id
    assert snap.has_status and isinstance(snap.revision, int)
    assert condition(snap, "Ready").reason == "ProcessRunning"
    assert condition(snap, "Ready").message == f"pid {pid}"
    assert alive(pid)
    assert await driver.get_sandbox(sb.metadata.id) == snap
    assert await driver.list_sandboxes() == [snap]
    workdir = state_dir / "sandboxes" / sb.metadata.id
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert (workdir / "owner").read_text() == "r1"
    assert openshell_pb2.Sandbox.FromString((workdir / "sandbox.pb").read_bytes()) == sb
    assert driver.watch_ready


async def test_a_process_that_exits_reports_its_exit_code(driver: LocalDriver) -> None:
    events = driver.events()
    sb = make_sandbox(["sh", "-c", "exit 3"])
    await driver.create_sandbox(sb)

    exited = await next_event(events, ready("False", "ContainerExited"))
    assert isinstance(exited, SnapshotEvent)
    assert exited.snapshot.exit_code == 3
    assert condition(exited.snapshot, "Ready").message == "exited with code 3"
    assert exited.snapshot.instance.pod_name == ""
    warning = await next_event(events, lambda e: isinstance(e, PlatformEvent))
    assert isinstance(warning, PlatformEvent)
    assert (warning.sandbox_id, warning.type, warning.reason) == (
        sb.metadata.id,
        "Warning",
        "ProcessExited",
    )
    assert warning.message == "exited with code 3"
    assert await driver.get_sandbox(sb.metadata.id) == exited.snapshot


async def test_stop_then_start(driver: LocalDriver) -> None:
    events = driver.events()
    sb = make_sandbox()
    await driver.create_sandbox(sb)
    running = await next_event(events, ready("True"))
    assert isinstance(running, SnapshotEvent)
    first_pid = pid_of(running.snapshot)

    await driver.stop_sandbox(sb.metadata.id)
    assert not alive(first_pid)  # gone when stop returns
    stopped = await next_event(events, lambda e: isinstance(e, SnapshotEvent))
    assert isinstance(stopped, SnapshotEvent)
    assert condition(stopped.snapshot, "Suspended").status == "True"
    assert condition(stopped.snapshot, "Suspended").reason == "PodTerminated"
    assert condition(stopped.snapshot, "Ready").reason == "SandboxSuspended"
    # An explicit stop is not an exit: no ContainerExited, no ProcessExited warning.
    assert drain(events) == []
    await driver.stop_sandbox(sb.metadata.id)  # stopping twice changes nothing
    assert drain(events) == []

    await driver.start_sandbox(sb.metadata.id)
    again = await next_event(events, ready("True", "ProcessRunning"))
    assert isinstance(again, SnapshotEvent)
    second_pid = pid_of(again.snapshot)
    assert second_pid != first_pid
    assert alive(second_pid)
    await driver.start_sandbox(sb.metadata.id)  # already running: nothing happens
    assert drain(events) == []


async def test_stop_kills_a_process_that_ignores_sigterm(state_dir: Path) -> None:
    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=0.3)
    await d.start()
    try:
        sb = make_sandbox(IGNORE_TERM)
        await d.create_sandbox(sb)
        snap = await d.get_sandbox(sb.metadata.id)
        assert snap is not None
        await asyncio.sleep(0.3)  # let the interpreter install its SIG_IGN
        began = time.monotonic()
        await d.stop_sandbox(sb.metadata.id)
        assert time.monotonic() - began < 1.5
        assert not alive(pid_of(snap))
    finally:
        await d.close()


async def test_delete(driver: LocalDriver, state_dir: Path) -> None:
    events = driver.events()
    sb = make_sandbox()
    await driver.create_sandbox(sb)
    snap = await driver.get_sandbox(sb.metadata.id)
    assert snap is not None

    assert await driver.delete_sandbox(sb.metadata.id) is True
    deleted = await next_event(events, lambda e: isinstance(e, DeletedEvent))
    assert deleted == DeletedEvent(sandbox_id=sb.metadata.id)
    assert not alive(pid_of(snap))
    assert not (state_dir / "sandboxes" / sb.metadata.id).exists()
    assert list((state_dir / "sandboxes").iterdir()) == []  # no trash left either
    assert await driver.get_sandbox(sb.metadata.id) is None
    assert await driver.list_sandboxes() == []
    assert await driver.delete_sandbox(sb.metadata.id) is False
    assert await driver.delete_sandbox("never-existed") is False
    assert [e for e in drain(events) if not isinstance(e, SnapshotEvent)] == []


async def test_create_twice_runs_one_process(driver: LocalDriver) -> None:
    events = driver.events()
    sb = make_sandbox()
    await asyncio.gather(driver.create_sandbox(sb), driver.create_sandbox(sb))
    await driver.create_sandbox(sb)
    snaps = [e for e in drain(events) if isinstance(e, SnapshotEvent)]
    assert len(snaps) == 1
    snap = await driver.get_sandbox(sb.metadata.id)
    assert snap is not None and snap == snaps[0].snapshot
    assert alive(pid_of(snap))


async def test_no_lock_outlives_the_calls_on_its_sandbox(driver: LocalDriver) -> None:
    """A gateway creates and deletes sandboxes all day: the per-sandbox locks must go with
    the last call that used them (one kept per id ever seen grew the process without end),
    yet calls on one sandbox that overlap must still share one lock."""
    ids = []
    for _ in range(3):
        sb = make_sandbox()
        await asyncio.gather(driver.create_sandbox(sb), driver.create_sandbox(sb))
        ids.append(sb.metadata.id)
    await driver.stop_sandbox(ids[0])
    await driver.start_sandbox(ids[0])
    await asyncio.gather(driver.delete_sandbox(ids[1]), driver.delete_sandbox(ids[1]))
    await driver.delete_sandbox(ids[2])
    assert driver._locks == {}
    assert [s.sandbox_id for s in await driver.list_sandboxes()] == [ids[0]]


async def test_a_create_during_a_delete_waits_for_it(driver: LocalDriver, state_dir: Path) -> None:
    """Calls on one sandbox run one at a time: a create that arrives while the delete is
    still stopping the child waits, then starts afresh (run together, the create would start
    a child in the directory the delete then removes)."""
    sb = make_sandbox()
    await driver.create_sandbox(sb)
    first = await driver.get_sandbox(sb.metadata.id)
    assert first is not None
    deleted, _ = await asyncio.gather(
        driver.delete_sandbox(sb.metadata.id), driver.create_sandbox(sb)
    )
    assert deleted is True and await gone(pid_of(first))
    again = await driver.get_sandbox(sb.metadata.id)
    assert again is not None and alive(pid_of(again))
    assert (state_dir / "sandboxes" / sb.metadata.id / "sandbox.pb").exists()
    assert driver._locks == {}


async def test_revisions_strictly_increase(driver: LocalDriver) -> None:
    events = driver.events()
    a, b = make_sandbox(), make_sandbox(["sh", "-c", "exit 1"])
    await driver.create_sandbox(a)
    await driver.create_sandbox(b)
    await next_event(events, ready("False", "ContainerExited"))
    await driver.stop_sandbox(a.metadata.id)
    await driver.start_sandbox(a.metadata.id)
    await driver.start_sandbox(b.metadata.id)
    await driver.delete_sandbox(a.metadata.id)
    revisions = revisions_of(drain(events))
    assert len(revisions) >= 4
    assert revisions == sorted(set(revisions))


async def test_every_subscriber_gets_every_event_from_its_call_on(driver: LocalDriver) -> None:
    first = driver.events()
    await driver.create_sandbox(make_sandbox())
    second = driver.events()  # subscribed now: sees only what follows
    sb = make_sandbox()
    await driver.create_sandbox(sb)
    assert [type(e) for e in drain(first)] == [SnapshotEvent, SnapshotEvent]
    from_second = drain(second)
    assert [e.snapshot.sandbox_id for e in from_second if isinstance(e, SnapshotEvent)] == [
        sb.metadata.id
    ]


async def test_replicas_do_not_touch_each_others_sandboxes(state_dir: Path) -> None:
    d1 = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    d2 = LocalDriver(state_dir=state_dir, replica_id="r2", stop_grace_s=1.0)
    await d1.start()
    await d2.start()
    try:
        events2 = d2.events()
        sb = make_sandbox()
        sid = sb.metadata.id
        await d1.create_sandbox(sb)
        snap = await d1.get_sandbox(sid)
        assert snap is not None
        pid = pid_of(snap)

        assert await d2.get_sandbox(sid) is None
        assert await d2.list_sandboxes() == []
        assert d1.owns(sid) and not d2.owns(sid)
        for foreign_call in (d2.stop_sandbox, d2.start_sandbox, d2.delete_sandbox):
            with pytest.raises(DriverNotOwner):
                await foreign_call(sid)
        await d2.create_sandbox(sb)  # exists under this id: success, and nothing started
        assert alive(pid)
        assert await d1.get_sandbox(sid) == snap
        assert (state_dir / "sandboxes" / sid / "owner").read_text() == "r1"
        assert drain(events2) == []

        # A restarted r2 does not adopt r1's sandbox either.
        await d2.close()
        d2 = LocalDriver(state_dir=state_dir, replica_id="r2", stop_grace_s=1.0)
        await d2.start()
        assert await d2.list_sandboxes() == []
        assert alive(pid)
        # And each replica sees its own.
        own = make_sandbox()
        await d2.create_sandbox(own)
        assert [s.sandbox_id for s in await d2.list_sandboxes()] == [own.metadata.id]
        assert [s.sandbox_id for s in await d1.list_sandboxes()] == [sid]
        # The other way round: r1 leaves r2's sandbox alone.
        own_snap = await d2.get_sandbox(own.metadata.id)
        assert own_snap is not None
        assert await d1.get_sandbox(own.metadata.id) is None
        for foreign_call in (d1.stop_sandbox, d1.delete_sandbox):
            with pytest.raises(DriverNotOwner):
                await foreign_call(own.metadata.id)
        assert alive(pid_of(own_snap))
        assert (state_dir / "sandboxes" / own.metadata.id).is_dir()
    finally:
        await d1.close()
        await d2.close()


async def test_environment_working_directory_and_log(
    driver: LocalDriver, state_dir: Path, environ_secret: str
) -> None:
    events = driver.events()
    sb = make_sandbox(
        ["sh", "-c", "env > env.txt; pwd > pwd.txt; echo to-stdout; echo to-stderr >&2"],
        template_env={"FROM_TEMPLATE": "t", "OVERRIDDEN": "template"},
        env={"FROM_SPEC": "s", "OVERRIDDEN": "spec"},
    )
    await driver.create_sandbox(sb)
    exited = await next_event(events, ready("False", "ContainerExited"))
    assert isinstance(exited, SnapshotEvent)
    assert exited.snapshot.exit_code == 0

    workdir = state_dir / "sandboxes" / sb.metadata.id
    env = dict(
        line.split("=", 1) for line in (workdir / "env.txt").read_text().splitlines() if "=" in line
    )
    assert env["HOME"] == str(workdir)
    assert env["PATH"] and env["LANG"]
    assert env["FROM_TEMPLATE"] == "t"
    assert env["FROM_SPEC"] == "s"
    assert env["OVERRIDDEN"] == "spec"
    assert environ_secret not in env  # the gateway's environment does not leak in
    assert Path((workdir / "pwd.txt").read_text().strip()).resolve() == workdir.resolve()
    log = (workdir / "sandbox.log").read_text()
    assert "to-stdout" in log and "to-stderr" in log


async def test_bad_requests_raise_and_leave_nothing(driver: LocalDriver, state_dir: Path) -> None:
    with pytest.raises(DriverError):
        await driver.create_sandbox(make_sandbox(sandbox_id="../escape"))
    missing = make_sandbox(["/nonexistent/command"])
    with pytest.raises(DriverError, match="cannot start"):
        await driver.create_sandbox(missing)
    assert not (state_dir / "sandboxes" / missing.metadata.id).exists()
    assert await driver.get_sandbox(missing.metadata.id) is None


async def test_close_leaves_no_child_processes(state_dir: Path) -> None:
    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    await d.start()
    events = d.events()
    ids = []
    for command in (None, None, ["sh", "-c", "sleep 30 & echo $! > child.pid; wait"], IGNORE_TERM):
        sb = make_sandbox(command)
        await d.create_sandbox(sb)
        ids.append(sb.metadata.id)
    grandchild_file = state_dir / "sandboxes" / ids[2] / "child.pid"
    for _ in range(100):
        if grandchild_file.exists() and grandchild_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    pids = []
    for sid in ids:
        snap = await d.get_sandbox(sid)
        assert snap is not None
        pids.append(pid_of(snap))
    pids.append(int(grandchild_file.read_text()))
    await asyncio.sleep(0.2)  # let IGNORE_TERM install its handler
    assert len(drain(events)) == 4  # the Ready snapshots

    began = time.monotonic()
    await d.close()
    assert time.monotonic() - began < 2.5
    assert not d.watch_ready
    for pid in pids:
        assert await gone(pid), f"pid {pid} survived close()"
    # Streams end, and no exit is reported for children the driver terminated itself.
    assert [e async for e in events] == []
    assert [e async for e in d.events()] == []


async def test_restart_restores_running_stopped_and_exited(state_dir: Path) -> None:
    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    await d.start()
    events = d.events()
    running, stopped, exited = make_sandbox(), make_sandbox(), make_sandbox(["sh", "-c", "exit 7"])
    for sb in (running, stopped, exited):
        await d.create_sandbox(sb)
    await d.stop_sandbox(stopped.metadata.id)
    # Every event of the first run, whichever order the stop and the exit came in.
    seen = await events_until(events, ready("False", "ContainerExited"))
    before = await d.get_sandbox(running.metadata.id)
    assert before is not None
    old_revisions = revisions_of(seen + drain(events))
    await d.close()
    assert await gone(pid_of(before))

    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    events = d.events()
    assert not d.watch_ready
    await d.start()
    assert d.watch_ready
    try:
        snaps = {s.sandbox_id: s for s in await d.list_sandboxes()}
        assert set(snaps) == {running.metadata.id, stopped.metadata.id, exited.metadata.id}
        # Was running when the gateway went away: started again, with a new pid.
        back = snaps[running.metadata.id]
        assert condition(back, "Ready").status == "True"
        assert pid_of(back) != pid_of(before) and alive(pid_of(back))
        # Stopped stays stopped; exited reports its code again.
        assert condition(snaps[stopped.metadata.id], "Suspended").status == "True"
        assert snaps[stopped.metadata.id].instance.pod_name == ""
        assert condition(snaps[exited.metadata.id], "Ready").reason == "ContainerExited"
        assert snaps[exited.metadata.id].exit_code == 7
        # The store learns through events, and new revisions sort after the old ones.
        emitted = drain(events)
        notes = [e for e in emitted if isinstance(e, PlatformEvent)]
        assert [(n.sandbox_id, n.reason) for n in notes] == [
            (running.metadata.id, "ProcessRestarted")
        ]
        new_revisions = revisions_of(emitted)
        assert len(new_revisions) == 3
        assert min(new_revisions) > max(old_revisions)
        # The stopped one can be started from its persisted spec.
        await d.start_sandbox(stopped.metadata.id)
        started = await d.get_sandbox(stopped.metadata.id)
        assert started is not None and condition(started, "Ready").status == "True"
    finally:
        await d.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_restart_kills_a_surviving_orphan_but_not_a_reused_pid(state_dir: Path) -> None:
    d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    await d.start()
    orphaned, reused = make_sandbox(), make_sandbox()
    for sb in (orphaned, reused):
        await d.create_sandbox(sb)
    await d.close()

    # As if the gateway had been SIGKILLed: its children outlived it in their own sessions.
    orphan = await asyncio.create_subprocess_exec(*IGNORE_TERM, start_new_session=True)
    stranger = await asyncio.create_subprocess_exec(*IGNORE_TERM, start_new_session=True)
    try:
        root = state_dir / "sandboxes"
        start_time = Path(f"/proc/{orphan.pid}/stat").read_text().rpartition(")")[2].split()[19]
        (root / orphaned.metadata.id / "pid").write_text(f"{orphan.pid} {start_time}")
        # A pid file naming a live process with another start time: the pid was reused.
        (root / reused.metadata.id / "pid").write_text(f"{stranger.pid} 1")

        d = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
        await d.start()
        try:
            assert await asyncio.wait_for(orphan.wait(), 2) == -signal.SIGKILL
            assert stranger.returncode is None and alive(stranger.pid)
            for sb in (orphaned, reused):
                snap = await d.get_sandbox(sb.metadata.id)
                assert snap is not None and condition(snap, "Ready").status == "True"
        finally:
            await d.close()
    finally:
        for proc in (orphan, stranger):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_sandbox_no_replica_claimed_is_nobodys(state_dir: Path) -> None:
    """No owner file is no evidence of ownership: with a state directory per replica, every
    other replica's sandbox has none here, and treating it as ours let each replica's sweep
    delete the others' rows. The row records the owner instead."""
    mine = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
    other = LocalDriver(state_dir=state_dir, replica_id="r2", stop_grace_s=1.0)
    await mine.start()
    await other.start()
    try:
        unclaimed = str(uuid.uuid4())
        assert not mine.owns(unclaimed) and not other.owns(unclaimed)
        assert not mine.owns("../escape")
        assert await mine.get_sandbox(unclaimed) is None
        claimed = make_sandbox()
        await mine.create_sandbox(claimed)
        assert mine.owns(claimed.metadata.id) and not other.owns(claimed.metadata.id)
    finally:
        await mine.close()
        await other.close()


async def test_refusals_name_no_host_path(driver: LocalDriver, state_dir: Path) -> None:
    """What the driver answers reaches the client; the state directory stays in the log."""
    blocked = make_sandbox()
    (state_dir / "sandboxes" / blocked.metadata.id).write_text("a file where a directory goes")
    with pytest.raises(DriverError) as refused:
        await driver.create_sandbox(blocked)
    assert str(state_dir) not in str(refused.value)
    missing = make_sandbox(["/no/such/program"])
    with pytest.raises(DriverError) as refused:
        await driver.create_sandbox(missing)
    assert str(state_dir) not in str(refused.value)
    assert "No such file or directory" in str(refused.value)
