"""The decisions of a read's calls, shared by the sync and async read paths.

Only the I/O differs between ``Lakehouse.read`` and ``AsyncLakehouse.read`` (and between
``read_table`` and ``read_table_async``); what to do when a call fails is decided here, once:
which error fails a call over to another channel at once, how many times one call is tried
and how long the client waits before the next try. The failover's tries count against the
caller's ``RetryPolicy``: one place bounds them, so retries never multiply.
"""

from __future__ import annotations

import dataclasses

import grpc

from lakehouse.client.errors import decode_error
from lakehouse.client.retry import OnRetry, RetryPolicy

__all__ = ["AttemptPlan", "replica_gone", "snapshot_expired"]

#: UNAVAILABLE reasons of a replica going away (draining); a call fails over to another
#: channel on these, and on an UNAVAILABLE without ErrorInfo (the connection failed).
_GOING_AWAY = frozenset({"", "SHUTTING_DOWN"})


def replica_gone(error: grpc.RpcError) -> bool:
    """Whether ``error`` says the replica (or the connection to it) went away.

    A backing service that failed (``OBJECT_STORE_UNAVAILABLE``, a circuit breaker open...)
    fails every replica alike: trying the next channel at once only adds a wait, so such an
    error waits for its ``RetryInfo`` (with a retry policy) or is raised.
    """
    decoded = decode_error(error)
    return decoded.code == grpc.StatusCode.UNAVAILABLE and decoded.reason in _GOING_AWAY


def snapshot_expired(error: grpc.RpcError) -> bool:
    """Whether a session's pinned snapshot was expired by maintenance meanwhile."""
    return decode_error(error).reason == "SNAPSHOT_EXPIRED"


@dataclasses.dataclass(frozen=True)
class AttemptPlan:
    """How many times one call of a read is tried, on which channel, after which wait.

    Try ``n`` (from 1) of a call that starts on channel ``first`` goes to channel
    ``(first + n - 1) % channels``.

    Without a policy (``lakehouse.client.arrow``'s helpers): a call whose replica went away
    (``UNAVAILABLE`` without ``ErrorInfo``, or ``SHUTTING_DOWN``) is tried again at once on the
    next channel, every channel once and a single one twice; any other error is raised.

    With a policy (the high-level clients): a call is tried at most ``policy.max_attempts``
    times in all, its failover included. After a replica went away the untried channels are
    tried at once; after that, and for the other errors the policy retries (``UNAVAILABLE``
    of a backing service, ``RESOURCE_EXHAUSTED`` with ``RetryInfo``), the client waits the
    policy's delay (the server's ``RetryInfo``, else a jittered backoff).

    Attributes:
        channels: How many channels the call may go to.
        policy: The caller's retry policy; None for failover only.
        on_retry: Called before each retry (``delay`` 0 for an immediate failover).
    """

    channels: int
    policy: RetryPolicy | None = None
    on_retry: OnRetry | None = None

    @property
    def tries(self) -> int:
        """The most tries of one call."""
        if self.policy is None:
            return max(2, self.channels)
        return self.policy.max_attempts

    def channel(self, first: int, attempt: int) -> int:
        """The channel of try ``attempt`` (from 1) of a call that starts on ``first``."""
        return (first + attempt - 1) % self.channels

    def wait(self, error: grpc.RpcError, attempt: int) -> float:
        """The wait in seconds before the try after ``attempt`` (from 1) failed with ``error``.

        Raises:
            grpc.RpcError: ``error`` itself, when it is final.
        """
        delay = self._delay(error, attempt) if attempt < self.tries else None
        if delay is None:
            raise error
        if self.on_retry is not None:
            self.on_retry(decode_error(error), attempt, delay)
        return delay

    def _delay(self, error: grpc.RpcError, attempt: int) -> float | None:
        if replica_gone(error) and (self.policy is None or attempt < self.channels):
            return 0.0
        if self.policy is None:
            return None
        return self.policy.delay(decode_error(error), attempt, idempotent=True)
