"""The per-caller rate limit: a token bucket per principal, in a server interceptor.

Each authenticated principal (each client address when authentication is off, as every caller
is then the same anonymous admin) has a bucket of ``quotas.burst_calls`` tokens refilled at
``quotas.calls_per_second``. A call takes one token, whatever it streams; a call that finds
the bucket empty ends with ``RESOURCE_EXHAUSTED``, reason ``RATE_LIMITED``, and a
``RetryInfo`` whose delay is the time until the bucket holds a token again. Health and
reflection are exempt, so probes and operators get through while a caller is limited; the
sidecar HTTP port (``/metrics``, ``/healthz``) is not a gRPC service and never limited.

The buckets live in the process: with N replicas behind a load balancer a caller may make up
to N times the configured rate in all. Enforcing it across replicas would need a shared
store on the path of every call, which costs more than the limit protects.

The Arrow Flight port takes its tokens from the same buckets (``RateLimiter``), so a caller's
rate is one across both ports.

The interceptor sits inside the auth interceptor (see ``lakehouse.server.app``), so the
principal is known when it runs and a refusal is metered, logged and mapped to a status like
any other error.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from lakehouse.config import QuotaSettings
from lakehouse.core.caller import current_principal
from lakehouse.domain.errors import ResourceExhausted
from lakehouse.metrics import QUOTA_REFUSALS
from lakehouse.server.interceptors import Handler, MethodInterceptor, relay, rewrapped, split_method
from lakehouse.server.permissions import HEALTH_SERVICE, REFLECTION_SERVICES

Context = grpc.aio.ServicerContext[Any, Any]
REASON = "RATE_LIMITED"
#: Services never limited: load balancers, kubelets and operators must get their answer.
EXEMPT_SERVICES = frozenset({HEALTH_SERVICE, *REFLECTION_SERVICES})
#: Most buckets kept at once. Beyond it, buckets that have refilled completely (their caller
#: was idle long enough to be indistinguishable from a new one) are dropped; a flood of new
#: addresses cannot grow the table without bound.
MAX_BUCKETS = 100_000


class TokenBuckets:
    """Token buckets by key, refilled lazily on use (no timers, O(1) per call).

    Args:
        rate: Tokens added per second (> 0).
        burst: Size of each bucket; a new key starts full.
        clock: Monotonic seconds (a test may pass its own).
        max_buckets: Most buckets kept (see ``MAX_BUCKETS``).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_buckets = max_buckets
        # key -> (tokens, when they were counted). Tuples, not objects: one allocation a call.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Takes one token from ``key``'s bucket.

        Returns:
            0.0 when the call may go ahead; otherwise the seconds until a token is there
            (nothing was taken).
        """
        # Under a lock: the Flight port takes tokens on pyarrow's threads, the gRPC port on
        # the event loop (uncontended, the lock costs well under a microsecond a call).
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                if key not in self._buckets and len(self._buckets) >= self._max_buckets:
                    self._evict(now)
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        """Drops the buckets that are full again; if none is, the oldest half."""
        full = [
            key
            for key, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate >= self.burst
        ]
        if not full:  # every caller is active: forgetting some gives them a fresh burst
            full = list(self._buckets)[: max(1, len(self._buckets) // 2)]
        for key in full:
            del self._buckets[key]


def caller_key(principal: str, peer: str, *, by_peer: bool) -> str:
    """The bucket of a call: its principal, or its client's address without the port.

    ``ipv4:10.0.0.7:51234`` and ``ipv6:[::1]:51234`` become ``peer:10.0.0.7`` and
    ``peer:[::1]``, so one client's many connections share one bucket.
    """
    if not by_peer and principal:
        return f"principal:{principal}"
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    host = address.rsplit(":", 1)[0] if address.count(":") >= 1 else address
    return f"peer:{host}"


class RateLimiter:
    """The per-caller rate limit, shared by the gRPC and Flight ports.

    A caller has one bucket, whichever port it calls.

    Args:
        settings: ``calls_per_second`` and ``burst_calls`` (``calls_per_second`` > 0).
        by_peer: Key buckets by client address (authentication is off, so every caller is
            the anonymous admin); otherwise by authenticated principal.
        clock: Monotonic seconds, for tests.
    """

    def __init__(
        self,
        settings: QuotaSettings,
        *,
        by_peer: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = TokenBuckets(settings.calls_per_second, settings.burst_calls, clock=clock)
        self._by_peer = by_peer

    def admit(self, principal: str, peer: Callable[[], str]) -> None:
        """Takes a token for a call of ``principal`` from ``peer()`` (asked only when needed).

        Raises:
            ResourceExhausted: The caller's bucket is empty (reason ``RATE_LIMITED``).
        """
        if self._by_peer or not principal:
            key = caller_key(principal, peer(), by_peer=True)
        else:
            key = f"principal:{principal}"  # the hot path: no peer string to build
        wait = self.buckets.take(key)
        if wait <= 0.0:
            return
        QUOTA_REFUSALS.labels("rate").inc()
        # RetryInfo carries milliseconds: round up, so a client retrying on time finds a token.
        wait_ms = max(1, math.ceil(wait * 1000))
        raise ResourceExhausted(
            f"rate limited: at most {self.buckets.rate:g} calls per second (bursts of "
            f"{self.buckets.burst:g}) per caller; retry in {wait_ms} ms",
            reason=REASON,
            metadata={
                "calls_per_second": f"{self.buckets.rate:g}",
                "burst_calls": f"{self.buckets.burst:g}",
            },
            retry_after_seconds=wait_ms / 1000,
        )


class RateLimitInterceptor(MethodInterceptor):
    """Refuses calls beyond a principal's rate with ``RESOURCE_EXHAUSTED`` and ``RetryInfo``.

    Args:
        limiter: The process's rate limiter (shared with the Flight port).
    """

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """Wraps the handler of every method but those of the exempt services."""
        if split_method(method)[0] in EXEMPT_SERVICES:
            return handler
        return rewrapped(handler, self._wrap)

    def _admit(self, context: Context) -> None:
        """Takes a token for the call.

        Raises:
            ResourceExhausted: The caller's bucket is empty (reason ``RATE_LIMITED``).
        """
        self.limiter.admit(current_principal(), lambda: context.peer() or "")

    def _wrap(self, behavior: Callable[..., Any], grpc_type: str) -> Callable[..., Any]:
        if grpc_type in ("unary", "client_stream"):
            # Not a coroutine of its own (see interceptors._checked_unary).
            def unary(request: Any, context: Context) -> Awaitable[Any]:
                self._admit(context)
                awaitable: Awaitable[Any] = behavior(request, context)
                return awaitable

            return unary

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            self._admit(context)
            async for response in relay(behavior(request, context)):
                yield response

        return streaming
