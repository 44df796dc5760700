"""Bounded read-ahead for async streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


async def prefetch(
    source: AsyncIterator[T], transform: Callable[[T], Awaitable[U]], *, depth: int
) -> AsyncIterator[U]:
    """Runs ``source`` and ``transform`` up to ``depth`` items ahead of the consumer.

    Producing the next item (reading and encoding) overlaps with the consumer sending the
    current one, while at most ``depth`` items wait in memory. When the consumer stops early
    (a cancelled call), the producer is cancelled and ``source`` is closed.

    Raises:
        Exception: Whatever ``source`` or ``transform`` raised, at the point it happened.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def produce() -> None:
        try:
            async for item in source:
                await queue.put(await transform(item))
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put(_Failure(exc))
            return
        await queue.put(_DONE)

    producer = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class _Failure:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
