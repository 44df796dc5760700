"""A few channels to one service, each its own connection, taken in turn.

All calls of one gRPC channel share one HTTP/2 connection: its flow-control window, its limit
of concurrent streams (the server's ``LAKEHOUSE_MAX_CONCURRENT_STREAMS``, 100) and one reader
on each side. A client with many concurrent calls (writers, parallel reads) gets more of both
ends from a few connections, and behind a load balancer they may reach several replicas. gRPC
Python shares one connection between channels to the same target with the same options (its
global subchannel pool): ``grpc.use_local_subchannel_pool`` gives each channel its own.

``Lakehouse`` and ``AsyncLakehouse`` open ``channels`` of them (2 by default) and take the next
for each call; users of the generated stubs and ``lakehouse.client.arrow`` can do the same with
:func:`pooled_options` and :class:`RoundRobin`::

    channels = [grpc.insecure_channel(target, options=pooled_options()) for _ in range(2)]
    stubs = RoundRobin([TableServiceStub(c) for c in channels])
    table = read_rows_to_arrow(stubs.next().ReadRows(request))
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import grpc

from lakehouse.client.read_attempts import ReadShape, ServerFeatures, first_shape
from lakehouse.v1 import ingest_service_pb2_grpc, job_service_pb2_grpc, table_service_pb2_grpc

if TYPE_CHECKING:
    from lakehouse.v1.ingest_service_pb2_grpc import IngestServiceAsyncStub, IngestServiceStub
    from lakehouse.v1.job_service_pb2_grpc import JobServiceAsyncStub, JobServiceStub
    from lakehouse.v1.table_service_pb2_grpc import TableServiceAsyncStub, TableServiceStub

__all__ = [
    "DEFAULT_CHANNELS",
    "MAX_CHANNELS",
    "ReadChannels",
    "RoundRobin",
    "Spread",
    "check_channels",
    "pooled_options",
    "spread_over",
]

#: Channels a high-level client opens unless told otherwise.
DEFAULT_CHANNELS = 2
#: The most a high-level client opens: each is a connection the server holds.
MAX_CHANNELS = 16
_OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)

T = TypeVar("T")
TablesT = TypeVar("TablesT")
IngestT = TypeVar("IngestT")
JobsT = TypeVar("JobsT")
ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


def pooled_options(options: Sequence[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
    """``options`` for a channel that gets a connection of its own."""
    return (*options, _OWN_CONNECTION)


def check_channels(channels: int) -> int:
    """``channels``, once checked.

    Raises:
        ValueError: Fewer than 1 or more than ``MAX_CHANNELS``.
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be between 1 and {MAX_CHANNELS}, not {channels}")
    return channels


class RoundRobin(Generic[T]):
    """Items handed out in turn (stubs of the channels of a pool)."""

    def __init__(self, items: Sequence[T]) -> None:
        if not items:
            raise ValueError("a round robin needs at least one item")
        self.items = tuple(items)
        self.next = itertools.cycle(self.items).__next__
        """The next item."""


class Spread(Generic[TablesT, IngestT, JobsT]):
    """The three services' stubs on a few channels: each use takes the next channel's.

    Args:
        stubs: ``(tables, ingest, jobs)`` stubs of each channel.
    """

    def __init__(self, stubs: Sequence[tuple[TablesT, IngestT, JobsT]]) -> None:
        self._turn = RoundRobin(stubs)
        self.stubs = self._turn.items
        """Each channel's stubs, in order."""
        self.first = self.stubs[0]
        """The first channel's stubs."""

    @property
    def tables(self) -> TablesT:
        """``TableService`` on the next channel."""
        return self._turn.next()[0]

    @property
    def ingest(self) -> IngestT:
        """``IngestService`` on the next channel."""
        return self._turn.next()[1]

    @property
    def jobs(self) -> JobsT:
        """``JobService`` on the next channel."""
        return self._turn.next()[2]


@overload
def spread_over(
    channels: Sequence[grpc.aio.Channel],
) -> Spread[TableServiceAsyncStub, IngestServiceAsyncStub, JobServiceAsyncStub]: ...


@overload
def spread_over(
    channels: Sequence[grpc.Channel],
) -> Spread[TableServiceStub, IngestServiceStub, JobServiceStub]: ...


def spread_over(channels: Sequence[Any]) -> Spread[Any, Any, Any]:
    """The generated stubs of the three services on each of ``channels``."""
    return Spread(
        [
            (
                table_service_pb2_grpc.TableServiceStub(channel),
                ingest_service_pb2_grpc.IngestServiceStub(channel),
                job_service_pb2_grpc.JobServiceStub(channel),
            )
            for channel in channels
        ]
    )


class ReadChannels(Generic[ChannelT]):
    """The connections a high-level client reads a session's streams over.

    The pool's channels first, then more, each its own connection, opened on the first read
    that needs them. Safe to use from several threads at once: threads reading through one
    client open one set of channels between them, and none sees a half-built one.

    Args:
        pool: The ``TableService`` stub of each channel of the client's pool.
        open_channels: Opens that many more channels.
    """

    def __init__(self, pool: Sequence[Any], open_channels: Callable[[int], list[ChannelT]]) -> None:
        self.pool = list(pool)
        """The pool's ``TableService`` stubs."""
        self._turn: Callable[[], int] = itertools.cycle(range(len(self.pool))).__next__
        self._open_channels: Callable[[int], list[ChannelT]] = open_channels
        self._opened: list[ChannelT] = []
        self._lock = threading.Lock()

    @property
    def opened(self) -> list[ChannelT]:
        """The channels opened past the pool's."""
        with self._lock:
            return list(self._opened)

    def pool_in_turn(self) -> list[Any]:
        """The pool's stubs from the next channel in turn on: plain reads spread over them."""
        start: int = self._turn()
        return [*self.pool[start:], *self.pool[:start]]

    def for_read(self, row_limit: int, read_streams: int, server: ServerFeatures) -> list[Any]:
        """The stubs of one read: the pool's in turn for a plain read, else ``stubs``'s."""
        if first_shape(row_limit, read_streams, server) is ReadShape.PLAIN:
            return self.pool_in_turn()
        return self.stubs(read_streams)

    def stubs(self, read_streams: int) -> list[Any]:
        """A ``TableService`` stub per read stream (at least one), opening what is missing."""
        with self._lock:
            missing = read_streams - len(self.pool) - len(self._opened)
            if missing > 0:
                self._opened += self._open_channels(missing)
            opened = list(self._opened)
        extra: list[Any] = [table_service_pb2_grpc.TableServiceStub(c) for c in opened]
        return [*self.pool, *extra][: max(read_streams, 1)]
