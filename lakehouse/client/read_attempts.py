"""The decisions of a read's calls, shared by the sync and async read paths.

Only the I/O differs between ``Lakehouse.read`` and ``AsyncLakehouse.read`` (and between
``read_table`` and ``read_table_async``); what to do when a call fails is decided here, once:
which error fails a call over to another channel at once, how many times one call is tried
and how long the client waits before the next try. The failover's tries count against the
caller's ``RetryPolicy``: one place bounds them, so retries never multiply. A read's
``timeout`` is the deadline of the whole read: each call gets what is left of it.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable

import grpc

from lakehouse.client.errors import decode_error
from lakehouse.client.retry import OnRetry, RetryPolicy

__all__ = [
    "SESSIONS_RECHECK_SECONDS",
    "AttemptPlan",
    "Deadline",
    "ReadShape",
    "ServerFeatures",
    "deadline_exceeded",
    "first_shape",
    "next_shape",
    "replica_gone",
    "sessions_unsupported",
    "snapshot_expired",
]

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


def sessions_unsupported(error: grpc.RpcError) -> bool:
    """Whether the server has no read sessions (an older release: ``UNIMPLEMENTED``)."""
    return decode_error(error).code == grpc.StatusCode.UNIMPLEMENTED


#: How long a client reads with plain ``ReadRows`` after a server answered
#: ``CreateReadSession`` with ``UNIMPLEMENTED``, before it asks again: during a rolling
#: upgrade that answer came from one old replica, and the new ones have read sessions.
SESSIONS_RECHECK_SECONDS = 300.0


@dataclasses.dataclass
class ServerFeatures:
    """What a client learned about its server, so it does not ask on every read.

    What it learned expires: behind one address, replicas of two releases answer during a
    rolling upgrade, so one old replica's ``UNIMPLEMENTED`` holds for ``recheck_seconds``.

    Attributes:
        recheck_seconds: How long an ``UNIMPLEMENTED`` answer holds.
        clock: The clock of ``recheck_seconds`` (``time.monotonic``; a test moves its own).
    """

    recheck_seconds: float = SESSIONS_RECHECK_SECONDS
    clock: Callable[[], float] = time.monotonic
    _no_sessions_until: float | None = dataclasses.field(default=None, init=False)

    @property
    def read_sessions(self) -> bool:
        """Whether to read with a session (not for ``recheck_seconds`` after UNIMPLEMENTED)."""
        until = self._no_sessions_until
        return until is None or self.clock() >= until

    def sessions_unsupported(self) -> None:
        """Remembers (for ``recheck_seconds``) that the server answered ``UNIMPLEMENTED``."""
        self._no_sessions_until = self.clock() + self.recheck_seconds


class ReadShape(enum.Enum):
    """How a read gets its rows: a read session's streams, or one plain ``ReadRows``."""

    SESSION = "a read session"
    #: A new session, once, after maintenance expired the first one's snapshot.
    SESSION_AGAIN = "a new read session"
    PLAIN = "one ReadRows"


def first_shape(row_limit: int, max_streams: int, server: ServerFeatures) -> ReadShape:
    """How a read starts.

    A limit is read as one stream (its first rows, not a share of each stream's); so is a read
    of one stream, and any read from a server known to have no read sessions.
    """
    if row_limit or max_streams <= 1 or not server.read_sessions:
        return ReadShape.PLAIN
    return ReadShape.SESSION


def next_shape(
    error: grpc.RpcError, shape: ReadShape, server: ServerFeatures, *, can_read_plain: bool
) -> ReadShape:
    """How a read goes on after ``shape`` failed with ``error`` (its calls' retries spent).

    A session whose snapshot was expired meanwhile is read once more as a new session (of the
    current snapshot: the rows still come from one snapshot). A server without read sessions
    (``UNIMPLEMENTED``) is read with one plain ``ReadRows``, and ``server`` remembers it for
    a while (``ServerFeatures.recheck_seconds``).

    Raises:
        grpc.RpcError: ``error`` itself, when it is final.
    """
    if shape is ReadShape.SESSION and snapshot_expired(error):
        return ReadShape.SESSION_AGAIN
    if shape is not ReadShape.PLAIN and can_read_plain and sessions_unsupported(error):
        server.sessions_unsupported()
        return ReadShape.PLAIN
    raise error


def deadline_exceeded() -> grpc.RpcError:
    """The error of a read whose deadline passed, as gRPC raises it for a call's deadline."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Deadline Exceeded",
    )


@dataclasses.dataclass(frozen=True)
class Deadline:
    """When a whole read must be done, its retries and waits included.

    Attributes:
        at: The end, on ``time.monotonic``'s clock; None for no deadline.
    """

    at: float | None = None

    @classmethod
    def after(cls, timeout: float | None) -> Deadline:
        """The deadline ``timeout`` seconds from now (None: no deadline)."""
        return cls(None if timeout is None else time.monotonic() + timeout)

    def remaining(self) -> float | None:
        """The seconds left, the timeout of the next call (None: no deadline).

        Raises:
            grpc.RpcError: ``DEADLINE_EXCEEDED``, when none is left.
        """
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise deadline_exceeded()
        return left

    def allows(self, delay: float) -> bool:
        """Whether a wait of ``delay`` seconds ends before the deadline."""
        return self.at is None or time.monotonic() + delay < self.at


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

    Every call of the read and every wait fits in the read's ``deadline``: a call gets the
    time left as its timeout, and with none left the read fails with ``DEADLINE_EXCEEDED``.
    A wait that would end past the deadline is not started: the call's own error is raised at
    once (a retry that cannot happen would only turn, say, ``OBJECT_STORE_UNAVAILABLE`` with
    its ``RetryInfo`` into a reasonless ``DEADLINE_EXCEEDED`` after a useless sleep).

    Attributes:
        channels: How many channels the call may go to.
        policy: The caller's retry policy; None for failover only.
        on_retry: Called before each retry (``delay`` 0 for an immediate failover).
        deadline: The deadline of the whole read.
    """

    channels: int
    policy: RetryPolicy | None = None
    on_retry: OnRetry | None = None
    deadline: Deadline = Deadline()

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
            grpc.RpcError: ``error`` itself, when it is final or its wait would outlast the
                read's deadline (then before ``on_retry``: no retry is announced in vain).
        """
        delay = self._delay(error, attempt) if attempt < self.tries else None
        if delay is None or not self.deadline.allows(delay):
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
