"""Per-replica bounds on what callers may hold open, with their defaults.

Every bound has a flag (``shellgate serve --help``) and a row in docs/api.md's limits table.
They exist so that one caller, or many, cannot take a replica's memory, sockets or event
loop: what is beyond a bound is refused at once (RESOURCE_EXHAUSTED), never queued.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_receive_message_bytes: int = 4 * MIB
    """Largest request accepted (gRPC's own default, now explicit)."""
    max_send_message_bytes: int = 16 * MIB
    """Largest response sent; list pages end early well below it."""
    max_concurrent_rpcs: int = 1024
    """RPCs in flight on one replica, streams included; the next is RESOURCE_EXHAUSTED."""
    max_watch_streams: int = 512
    """Open WatchSandbox streams on one replica; each holds a feed subscription. Half the
    RPC cap, so watches alone cannot leave no room for unary calls."""
    max_exec_sessions: int = 256
    """Open ExecSandbox and ExecSandboxInteractive calls on one replica (relayed ones
    included); each holds a process, its pipes or a terminal."""
    keepalive_seconds: int = 60
    """The server pings an idle connection this often, to find dead peers."""
    max_connection_age_seconds: int = 3600
    """A connection is asked to go away after this long, so load rebalances across replicas;
    in-flight calls get ``max_connection_age_grace_seconds`` to finish."""
    max_connection_age_grace_seconds: int = 300
    database_statement_timeout_seconds: int = 30
    """Postgres: the server cancels a statement running longer (``statement_timeout``)."""
    database_acquire_timeout_seconds: int = 10
    """Postgres: longest wait for a pooled connection or a new one; then UNAVAILABLE."""


class Slots:
    """A counter of held slots with a ceiling; ``take`` fails instead of waiting."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self) -> bool:
        if self.held >= self.capacity:
            return False
        self.held += 1
        return True

    def give_back(self) -> None:
        self.held -= 1
