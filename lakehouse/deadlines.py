"""The current call's deadline, as every layer reads it.

The transport sets it (``call_deadline``) from the client's deadline and the server's own
limit; adapters read it before calling a backing service (a call does not start once it has
passed, and client libraries get the time left as their timeout); background work started
during a call drops it (``without_deadline``).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from lakehouse.domain.errors import DeadlineExceeded

#: ``time.monotonic()`` by which the current gRPC call must end; None outside a call (jobs,
#: background work) or for a call without any deadline.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "lakehouse_call_deadline", default=None
)
#: What ``enter_deadline`` returns.
DeadlineToken = contextvars.Token[float | None]


@contextlib.contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Runs the block with a deadline ``seconds`` from now (None: keep the current one).

    A deadline already set and sooner stays in force.
    """
    token = enter_deadline(seconds)
    try:
        yield
    finally:
        leave_deadline(token)


def enter_deadline(seconds: float | None) -> DeadlineToken | None:
    """``call_deadline`` without the context manager, for the transport's per-call path.

    Returns:
        What ``leave_deadline`` needs to restore the previous deadline.
    """
    if seconds is None:
        return None
    deadline = time.monotonic() + seconds
    current = _DEADLINE.get()
    return _DEADLINE.set(deadline if current is None else min(current, deadline))


def leave_deadline(token: DeadlineToken | None) -> None:
    """Restores the deadline ``enter_deadline`` replaced."""
    if token is not None:
        _DEADLINE.reset(token)


def remaining_seconds() -> float | None:
    """Seconds left before the current call's deadline (negative once passed), or None."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def check_deadline(dependency: str) -> None:
    """Refuses to start a call to ``dependency`` once the current call's deadline passed.

    Work queued behind a busy pool can start after its caller gave up; it must not then
    occupy the dependency (or a thread) for nobody.

    Raises:
        DeadlineExceeded: The deadline has passed.
    """
    left = remaining_seconds()
    if left is not None and left <= 0:
        raise DeadlineExceeded(
            f"the call's deadline passed before the {label(dependency)} was called",
            metadata={"dependency": dependency},
        )


def timeout_within(limit: float, dependency: str) -> float:
    """A client library timeout: ``limit``, or less when the call's deadline is sooner.

    Raises:
        DeadlineExceeded: The deadline has passed.
    """
    check_deadline(dependency)
    left = remaining_seconds()
    return limit if left is None else min(limit, left)


def without_deadline() -> contextvars.Context:
    """A copy of the current context without the call's deadline, for background tasks.

    A task started while handling a call copies that call's context; work that outlives the
    call (a table's group committer) must not inherit its deadline.
    """
    context = contextvars.copy_context()
    context.run(_DEADLINE.set, None)
    return context


def label(dependency: str) -> str:
    """A dependency's name as a person reads it (``object_store`` -> ``object store``)."""
    return dependency.replace("_", " ")
