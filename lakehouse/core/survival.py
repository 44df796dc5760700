"""Background loops that one bad table cannot stop.

pyiceberg and the other libraries the background tasks (maintenance scheduler, job workers,
ingest committers, health monitor) call may raise anything, ``BaseException`` included: a
table whose properties made pyiceberg import ``sys.exit`` raised ``SystemExit`` in the
scheduler, and an asyncio task that ends with ``SystemExit`` or ``KeyboardInterrupt`` stops
the event loop, so the process exited, and crash-looped after each restart. Every loop runs
each unit of work (one table, one job, one commit group, one check) under ``contained`` or
``tamed``; only the cancellation of the loop's own task still ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Failures already logged with a traceback, by where and what: a table that fails on every
#: pass is logged in full once, then in one line.
_LOGGED: set[tuple[str, str, str]] = set()
_MAX_LOGGED = 1024


class EscapedError(Exception):
    """A ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``...) raised by library code.

    Raised in its place by ``tamed`` so that callers handle it as any other failure.
    """


def own_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of the current task (which must end it)."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    # A CancelledError with no cancel() of this task pending came from something it awaited
    # (a cancelled future in a library): a failure like any other.
    return task is None or task.cancelling() > 0


async def tamed(start: Callable[[], Awaitable[T]]) -> T:
    """Awaits what ``start()`` returns; a ``BaseException`` it raises becomes ``EscapedError``.

    For work run as its own task (``asyncio.create_task``), whose ``SystemExit`` would stop
    the event loop before anyone awaits it. ``Exception``s and the current task's own
    cancellation pass unchanged. The work is started inside the task (``start``, not a
    coroutine made beforehand), so a task cancelled before it ran leaves no coroutine that
    was never awaited.

    Raises:
        EscapedError: The awaitable raised a ``BaseException`` that is not an ``Exception``.
    """
    try:
        return await start()
    except BaseException as exc:
        if isinstance(exc, Exception) or own_cancellation(exc):
            raise
        raise EscapedError(f"{type(exc).__name__} raised by library code") from exc


@contextlib.contextmanager
def contained(what: str, key: str = "") -> Iterator[None]:
    """Runs one unit of a background loop's work: any failure is logged and swallowed.

    Args:
        what: The loop and its unit, for the log (``"maintenance check"``).
        key: What the unit was about (a table's name), for the log and its dedup.
    """
    try:
        yield
    except BaseException as exc:
        if own_cancellation(exc):
            raise
        logged = (what, key, type(exc).__name__)
        extra = {"unit": what, "key": key, "error": type(exc).__name__}
        if logged in _LOGGED:
            log.warning("%s failed again: %s", what, _brief(exc), extra=extra)
            return
        if len(_LOGGED) < _MAX_LOGGED:
            _LOGGED.add(logged)
        log.error("%s failed; carrying on", what, exc_info=exc, extra=extra)


def _brief(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
