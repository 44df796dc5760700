"""Transport limits: a server-side deadline for every call, and the gRPC server options.

gRPC calls have no deadline unless the client sets one, and gRPC Python does not impose one
either: a client that forgets it (or a stalled peer) holds a handler, its buffers and its
backend connections forever. The server therefore gives every call a limit of its own,
``request_timeout_seconds`` for unary calls and ``stream_timeout_seconds`` for streaming ones.
A client deadline *sooner* than the limit is left to gRPC, which enforces it already; a later
one (or none) is cut at the limit, so the limit is a ceiling whatever clients send. The call
then ends with ``DEADLINE_EXCEEDED`` and reason ``SERVER_DEADLINE``, which tells it apart
from the client's own deadline.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from lakehouse.config import Settings
from lakehouse.deadlines import DeadlineToken, enter_deadline, leave_deadline
from lakehouse.domain.errors import DeadlineExceeded, ResourceExhausted

#: Largest request metadata (headers) accepted. gRPC's own soft limit is 8 KiB; a JWT bearer
#: token, ``traceparent`` and ``x-request-id`` fit in a quarter of this. Larger headers are
#: refused by gRPC with RESOURCE_EXHAUSTED before any handler runs.
MAX_METADATA_BYTES = 16 * 1024
#: What ``SERVER_OVERLOADED``'s ``RetryInfo`` asks: calls here last milliseconds to seconds.
OVERLOAD_RETRY_SECONDS = 0.5


class CallSlots:
    """The process-wide bound on calls handled at once, shared by the gRPC and Flight ports.

    Past ``limit`` a new call ends at once with ``RESOURCE_EXHAUSTED``, reason
    ``SERVER_OVERLOADED``, and a ``RetryInfo``, so an overloaded process sheds load with an
    answer clients retry elsewhere or later instead of piling up handlers. gRPC calls take a
    slot on the event loop, Flight calls on pyarrow's threads: the count is under a lock.

    Args:
        limit: Calls handled at once at most; 0 for no bound.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        """Calls holding a slot now."""
        return self._used

    def take(self) -> bool:
        """Takes a slot for a new call; False when there is no bound (nothing to give back).

        Raises:
            ResourceExhausted: Every slot is taken (reason ``SERVER_OVERLOADED``).
        """
        if not self.limit:
            return False
        with self._lock:
            if self._used < self.limit:
                self._used += 1
                return True
        raise ResourceExhausted(
            f"the server is handling its limit of {self.limit} calls at once "
            "(max_concurrent_calls); retry shortly, or on another replica",
            reason="SERVER_OVERLOADED",
            metadata={"limit": str(self.limit)},
            retry_after_seconds=OVERLOAD_RETRY_SECONDS,
        )

    def give_back(self) -> None:
        """Frees the slot of a call that ended (one ``take`` returned True for)."""
        with self._lock:
            self._used -= 1


@dataclass(frozen=True)
class CallDeadlines:
    """The server's time limits, per kind of call.

    Attributes:
        unary_seconds: Limit of calls with a single response (unary and client-streaming).
        stream_seconds: Limit of calls with a response stream (server and bidi streaming).
    """

    unary_seconds: float
    stream_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CallDeadlines:
        """The limits configured in ``settings``."""
        return cls(settings.request_timeout_seconds, settings.stream_timeout_seconds)

    def budget(self, time_remaining: float | None, *, streaming: bool) -> float | None:
        """Seconds after which the server cuts the call, or None to leave it to the client.

        Args:
            time_remaining: ``context.time_remaining()``: the client's deadline, if any.
            streaming: Whether the call streams its responses.
        """
        limit = self.stream_seconds if streaming else self.unary_seconds
        if time_remaining is not None and time_remaining <= limit:
            return None  # gRPC enforces the client's deadline itself, and it comes first
        return limit

    def applied(
        self, context: grpc.aio.ServicerContext[Any, Any], *, streaming: bool, method: str
    ) -> AppliedLimit:
        """Runs the body (``async with``) under the server's limit for this call.

        At the limit the body is cancelled (as a client deadline would cancel it, so the same
        ``finally`` clean-up runs) and ``DeadlineExceeded`` is raised in its place.

        The body also runs with its deadline (the client's or this limit, the sooner) set for
        the adapters (``lakehouse.deadlines.call_deadline``), which time their calls
        to backing services and their retries by it: gRPC Python does not pass it on.

        Raises:
            DeadlineExceeded: The body ran past the limit.
        """
        remaining = context.time_remaining()
        return AppliedLimit(
            self.budget(remaining, streaming=streaming), remaining, streaming, method
        )


class AppliedLimit:
    """The server's limit around one call's body (see ``CallDeadlines.applied``).

    A plain class rather than a generator-based context manager: every call enters one, and
    this costs a third of what ``contextlib.asynccontextmanager`` does.
    """

    __slots__ = ("_budget", "_method", "_remaining", "_streaming", "_timeout", "_token")

    def __init__(
        self, budget: float | None, remaining: float | None, streaming: bool, method: str
    ) -> None:
        self._budget = budget
        self._remaining = remaining
        self._streaming = streaming
        self._method = method
        self._timeout: asyncio.Timeout | None = None
        self._token: DeadlineToken | None = None

    async def __aenter__(self) -> None:
        if self._budget is None:
            # gRPC enforces the client's deadline itself, and it comes first.
            self._token = enter_deadline(self._remaining)
            return
        self._token = enter_deadline(self._budget)
        self._timeout = asyncio.timeout(self._budget)
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        leave_deadline(self._token)
        timeout = self._timeout
        if timeout is None:
            return
        try:
            await timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError:
            if not timeout.expired():
                raise  # a TimeoutError of the handler's own, not this limit
            kind = "streaming" if self._streaming else "unary"
            setting = "stream_timeout_seconds" if self._streaming else "request_timeout_seconds"
            raise DeadlineExceeded(
                f"{self._method} ran for the server's limit of {self._budget:g} s for {kind} "
                f"calls ({setting}); it applies to calls without a deadline or with a later one",
                metadata={"limit_seconds": f"{self._budget:g}"},
            ) from None


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The server options that carry the configured message, stream and connection limits."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        # gRPC core's "overload protection" (on by default) counts a stream against
        # max_concurrent_streams until Python has released its call object, well after the
        # call ended for the client, and refuses new streams past it (RST_STREAM
        # REFUSED_STREAM: UNAVAILABLE, nothing run): 150 calls at once on one channel had half
        # refused; 72 under load, some. Off, the HTTP/2 limit counts open streams as the client
        # does, so its extra calls queue on its side; the process-wide bound on calls
        # (max_concurrent_calls, in the observability interceptor) is the overload defence.
        ("grpc.http.overload_protection", 0),
    ]
    if settings.max_connection_age_seconds > 0:
        # The grace lets calls in flight run to the longest limit a call has anyway, so a
        # connection's age never cuts a call the deadline would have let finish.
        grace = max(settings.stream_timeout_seconds, settings.request_timeout_seconds)
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(grace * 1000)),
        ]
    return options
