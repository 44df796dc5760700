"""When the high-level client retries a call, and how long it waits first.

Two refusals are worth a retry: ``UNAVAILABLE`` (the server is down, restarting or draining,
or a backing service is) and ``RESOURCE_EXHAUSTED`` that carries a ``RetryInfo`` (the server
says when to come back: ``RATE_LIMITED``, a full write buffer). The wait is the server's
``RetryInfo`` delay when it gave one, else an exponential backoff with jitter; attempts are
bounded. Only calls that are safe to repeat are retried with ``UNAVAILABLE`` (the first attempt
may have done its work before the connection broke); a ``RATE_LIMITED`` or ``SERVER_OVERLOADED``
refusal happens before the call does anything, so it is retried for every call.

The loop is a few lines on purpose: the wait comes from each error's RetryInfo, which a
generic retry library would need a custom wait function for anyway.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import grpc

from lakehouse.client.errors import LakehouseError

__all__ = ["OnRetry", "RetryPolicy"]

#: Called before each wait: the error, the attempt that failed (1-based) and the delay.
OnRetry = Callable[[LakehouseError, int, float], None]

#: Refused before the call did anything: safe to retry whatever the call.
_REFUSED_AT_THE_DOOR = frozenset({"RATE_LIMITED", "SERVER_OVERLOADED"})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and how long the client waits between them.

    Attributes:
        max_attempts: Attempts in all, the first included; 1 turns retries off.
        initial_backoff: The first wait, in seconds, when the server gave no RetryInfo.
        max_backoff: The longest wait without RetryInfo, in seconds.
        multiplier: How much the wait grows per attempt without RetryInfo.
        max_retry_delay: The longest RetryInfo delay the client waits; a longer one is
            raised to the caller at once (waiting minutes inside a call is rarely wanted).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_retry_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")

    def delay(self, error: LakehouseError, attempt: int, *, idempotent: bool) -> float | None:
        """The wait before the next attempt, or None when the error is final.

        Args:
            error: Why the attempt failed.
            attempt: The attempt that failed, counting from 1.
            idempotent: Whether repeating the call is safe (see the module docstring).
        """
        if attempt >= self.max_attempts:
            return None
        exhausted = (
            error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None
        )
        if error.reason in _REFUSED_AT_THE_DOOR and error.retry_delay is not None:
            pass
        elif not idempotent or not (error.code == grpc.StatusCode.UNAVAILABLE or exhausted):
            return None
        if error.retry_delay is not None:
            if error.retry_delay > self.max_retry_delay:
                return None
            return error.retry_delay
        backoff = min(self.initial_backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        # Full jitter: replicas of one service that failed together do not retry together.
        return random.uniform(backoff / 2, backoff)
