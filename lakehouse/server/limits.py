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
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from lakehouse.config import Settings
from lakehouse.deadlines import call_deadline
from lakehouse.domain.errors import DeadlineExceeded

#: Largest request metadata (headers) accepted. gRPC's own soft limit is 8 KiB; a JWT bearer
#: token, ``traceparent`` and ``x-request-id`` fit in a quarter of this. Larger headers are
#: refused by gRPC with RESOURCE_EXHAUSTED before any handler runs.
MAX_METADATA_BYTES = 16 * 1024


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

    @contextlib.asynccontextmanager
    async def applied(
        self, context: grpc.aio.ServicerContext[Any, Any], *, streaming: bool, method: str
    ) -> AsyncIterator[None]:
        """Runs the body under the server's limit for this call.

        At the limit the body is cancelled (as a client deadline would cancel it, so the same
        ``finally`` clean-up runs) and ``DeadlineExceeded`` is raised in its place.

        The body also runs with its deadline (the client's or this limit, the sooner) set for
        the adapters (``lakehouse.deadlines.call_deadline``), which time their calls
        to backing services and their retries by it: gRPC Python does not pass it on.

        Raises:
            DeadlineExceeded: The body ran past the limit.
        """
        remaining = context.time_remaining()
        budget = self.budget(remaining, streaming=streaming)
        if budget is None:
            with call_deadline(remaining):
                yield
            return
        timeout = asyncio.timeout(budget)
        try:
            with call_deadline(budget):
                async with timeout:
                    yield
        except TimeoutError:
            if not timeout.expired():
                raise  # a TimeoutError of the handler's own, not this limit
            kind = "streaming" if streaming else "unary"
            setting = "stream_timeout_seconds" if streaming else "request_timeout_seconds"
            raise DeadlineExceeded(
                f"{method} ran for the server's limit of {budget:g} s for {kind} calls "
                f"({setting}); it applies to calls without a deadline or with a later one",
                metadata={"limit_seconds": f"{budget:g}"},
            ) from None


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The server options that carry the configured message, stream and connection limits."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
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
