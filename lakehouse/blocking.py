"""One bounded thread pool for blocking library calls (pyiceberg, pyarrow, SQLAlchemy).

pyiceberg and pyarrow block; they must never run on the event loop. A dedicated, bounded
pool keeps them from starving the default executor used by asyncio itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class BlockingPool:
    """Runs blocking callables in threads, propagating context variables (trace spans)."""

    def __init__(self, max_workers: int, name: str = "lakehouse-blocking") -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs ``fn(*args, **kwargs)`` in the pool and awaits its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        """Stops the threads once the queued work is done."""
        self._executor.shutdown(wait=True, cancel_futures=True)
