"""Who the request being handled comes from, for limits kept per caller.

The transport's authentication names the principal of each call; core code that keeps
per-caller limits (the jobs a principal may have queued) reads it here, without a
parameter through every servicer. Outside a call (the scheduler, workers) it is empty.
"""

from __future__ import annotations

from contextvars import ContextVar

_principal: ContextVar[str] = ContextVar("lakehouse_principal", default="")


def set_current_principal(name: str) -> None:
    """Names the authenticated caller of the current call (set by the transport)."""
    _principal.set(name)


def current_principal() -> str:
    """The authenticated caller of the current call; empty outside one."""
    return _principal.get()
