"""The mixed load of ``load_mixed``: many clients, reads, writes and jobs at once.

``MixedLoad.run`` drives one server with ``clients`` coroutines over a few ``grpc.aio``
channels (each its own connection, as separate client processes would have) for a warm-up and
a measured window, and records every call: method, when it
started, how long it took, and its status code. Most clients pick an operation per call from
``MIX`` (weighted); ``job_clients`` of them run jobs back to back instead (``CreateJob``, then
``WatchJob`` to the end, then ``GetJob``), so that at most that many jobs are queued or running
at a time whatever the request rate (the server runs 2 at once by default).

What a well-behaved client expects under load, and retries: ``RESOURCE_EXHAUSTED`` that carries
a ``google.rpc.RetryInfo`` (backpressure: a full write buffer; it waits the delay given and
sends again with the same ``request_id``) and ``ABORTED`` (a commit lost to a concurrent one).
Every other error is *unexpected*: ``UNKNOWN``, ``INTERNAL``, ``UNAVAILABLE`` (no backing
service fails here), ``DEADLINE_EXCEEDED`` (30 s for a unary call), ``RESOURCE_EXHAUSTED``
without ``RetryInfo`` (a gRPC limit), any other code, a wrong result, and a job that ends
``FAILED`` with a code other than ``ABORTED`` (or ``CANCELLED``: nobody cancels).

Acknowledged rows are counted per table so that the caller can check the tables hold exactly
those: ``WriteRows`` carries a ``request_id`` and is retried with it after any error whose
outcome is unknown, so each batch is written once or reported as unknown.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pyarrow as pa
from google.rpc import error_details_pb2, status_pb2

from lakehouse.client.arrow import (
    append_rows_requests,
    read_rows_request,
    read_rows_to_arrow_async,
    write_rows_request,
)
from lakehouse.v1 import (
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    table_service_pb2,
    table_service_pb2_grpc,
)

T = TypeVar("T")

#: The operations of the mixed clients and their weights (percent of the picks).
MIX: tuple[tuple[str, int], ...] = (
    ("GetTable", 20),  # one of the 4 tables (the write tables' metadata changes all the time)
    ("ListTables", 5),  # the namespace, one page of up to 100
    ("ReadRows", 15),  # a filtered read (~10%) of the 10k-row table, or 500 rows of a write table
    ("WriteRows", 35),  # 100 rows with a request_id into one of the write tables
    ("AppendRows", 5),  # a stream of 4 requests of 100 rows into one of the write tables
    ("GetJob", 10),  # one of the last 200 jobs created
    ("ListJobs", 10),  # the newest 20 jobs
)
#: Rows of one WriteRows request and of one AppendRows request.
BATCH_ROWS = 100
#: Requests of one AppendRows stream.
APPEND_REQUESTS = 4
#: Row limit of a ReadRows of a write table.
READ_LIMIT = 500
#: Every job client runs this cycle of job kinds (offset by its index): 3 SQL, 1 compaction.
JOB_CYCLE = ("sql", "sql", "sql", "compact_table")
#: Deadline of unary calls and ReadRows; of a WatchJob stream; of an AppendRows stream.
CALL_TIMEOUT = 30.0
WATCH_TIMEOUT = 300.0
#: Attempts of one WriteRows (the same request_id each time) before its rows count as unknown.
WRITE_ATTEMPTS = 8
#: Codes after which a WriteRows may or may not have been written: retried (client-side
#: failures too). Any other code is a definite refusal: nothing was written.
_RETRIED = {
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "UNKNOWN",
    "INTERNAL",
    "CANCELLED",
}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
_RETRY_INFO = error_details_pb2.RetryInfo.DESCRIPTOR.full_name
_ERROR_INFO = error_details_pb2.ErrorInfo.DESCRIPTOR.full_name


def _status_details(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _retry_delay(status: status_pb2.Status | None) -> float | None:
    """The RetryInfo delay in seconds, or None when the status carries none."""
    if status is None:
        return None
    for detail in status.details:
        if detail.type_url.endswith(_RETRY_INFO):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


def _reason(status: status_pb2.Status | None) -> str:
    if status is None:
        return ""
    for detail in status.details:
        if detail.type_url.endswith(_ERROR_INFO):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def expected(code: str, has_retry_info: bool) -> bool:
    """Whether a client under load expects (and retries) this error; see the module doc."""
    return code == "ABORTED" or (code == "RESOURCE_EXHAUSTED" and has_retry_info)


class CallFailed(Exception):
    """A call failed; recorded already. ``retry_after`` is the RetryInfo delay, if any."""

    def __init__(self, code: str, retry_after: float | None) -> None:
        super().__init__(code)
        self.code = code
        self.retry_after = retry_after


@dataclass
class Call:
    """One recorded call (a stream counts as one call, from its start to its end)."""

    method: str
    started: float  # loop time
    seconds: float
    code: str  # "OK", a gRPC status code name, or a client-side failure ("WRONG_RESULT"...)
    expected: bool  # an error a client under load expects (always True for OK)
    rpc: bool = True  # False for a job's outcome ("job sql"...), which is no call


@dataclass
class MethodSummary:
    """The measured window's calls of one method."""

    calls: int = 0
    ok: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful calls' latency, in ms."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))] * 1e3


@dataclass
class LoadReport:
    """What one run of the mixed load measured."""

    clients: int
    job_clients: int
    channels: int
    warmup: float
    window: float
    calls: list[Call]
    unexpected_examples: list[str]
    acked_rows: dict[str, int]
    unknown_rows: dict[str, int]
    jobs: collections.Counter[str]
    job_seconds: dict[str, list[float]]
    rss_kib: list[tuple[float, int]]  # (seconds since the window began, VmRSS) every sample
    rss_edge: float
    """RSS at the start (end) is the median of the samples of the window's first (last)
    ``rss_edge`` seconds: one sample swings by ~10 MiB as requests come and go."""
    server_cores: float
    client_cores: float

    @property
    def rss_start_kib(self) -> float:
        """VmRSS at the end of the warm-up (median of the window's first samples)."""
        return statistics.median(k for t, k in self.rss_kib if t <= self.rss_edge)

    @property
    def rss_end_kib(self) -> float:
        """VmRSS at the end of the window (median of its last samples)."""
        return statistics.median(k for t, k in self.rss_kib if t >= self.window - self.rss_edge)

    @property
    def rss_max_kib(self) -> int:
        """The highest VmRSS sampled in the window."""
        return max(k for _, k in self.rss_kib)

    def in_window(self) -> list[Call]:
        """The calls started in the measured window (not during the warm-up)."""
        return [c for c in self.calls if c.started >= 0]

    def by_method(self) -> dict[str, MethodSummary]:
        """Per-method summaries of the measured window, most calls first."""
        out: dict[str, MethodSummary] = collections.defaultdict(MethodSummary)
        for call in self.in_window():
            summary = out[call.method]
            summary.calls += 1
            if call.code == "OK":
                summary.ok += 1
                summary.latencies.append(call.seconds)
            else:
                summary.codes[call.code] += 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1].calls))

    @property
    def ok_per_second(self) -> float:
        """Successful calls per second in the measured window, all methods."""
        return sum(1 for c in self.in_window() if c.rpc and c.code == "OK") / self.window

    def unexpected(self, *, warmup: bool) -> int:
        """Unexpected errors, of the measured window or of the warm-up."""
        return sum(1 for c in self.calls if not c.expected and (c.started < 0) == warmup)

    def expected_errors(self) -> collections.Counter[str]:
        """Expected errors (retried) by code, warm-up and window together."""
        return collections.Counter(c.code for c in self.calls if c.expected and c.code != "OK")


class MixedLoad:
    """The clients' shared state: stubs, tables, acknowledged rows, recent job ids."""

    def __init__(
        self,
        *,
        target: str,
        namespace: str,
        read_table: str,
        read_filter: str,
        read_filter_rows: int,
        write_tables: list[str],
        batches: list[pa.Table],
        channel_options: list[tuple[str, Any]],
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.read_table = read_table
        self.read_filter = read_filter
        self.read_filter_rows = read_filter_rows
        self.write_tables = write_tables
        self.channel_options = channel_options
        # Requests are built once; each call only copies one and sets a fresh request_id.
        self.write_templates = [
            write_rows_request(namespace, t, b) for t in write_tables for b in batches
        ]
        self.append_streams = [
            list(
                append_rows_requests(
                    namespace,
                    t,
                    [b.to_batches()[0] for b in batches[i : i + APPEND_REQUESTS]],
                )
            )
            for t in write_tables
            for i in range(0, len(batches) - APPEND_REQUESTS + 1, APPEND_REQUESTS)
        ]
        self.calls: list[Call] = []
        self.unexpected_examples: list[str] = []
        self.acked_rows = dict.fromkeys(write_tables, 0)
        self.unknown_rows = dict.fromkeys(write_tables, 0)
        self.job_ids: collections.deque[str] = collections.deque(maxlen=200)
        self.jobs: collections.Counter[str] = collections.Counter()
        self.job_seconds: dict[str, list[float]] = collections.defaultdict(list)
        self._measure_from = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- recording ------------------------------------------------------------------------

    def _record(
        self, method: str, started: float, code: str, ok: bool, detail: str = "", rpc: bool = True
    ) -> None:
        assert self._loop is not None
        elapsed = self._loop.time() - started
        call = Call(method, started - self._measure_from, elapsed, code, ok, rpc)
        self.calls.append(call)
        if not ok and len(self.unexpected_examples) < 5:
            when = "warm-up" if call.started < 0 else f"{call.started:.1f}s"
            self.unexpected_examples.append(f"{method} {code} at {when}: {detail[:200]}")

    async def _call(self, method: str, make: Callable[[], Awaitable[T]]) -> T:
        """Awaits one call and records it; a failure is recorded and raised as CallFailed."""
        assert self._loop is not None
        started = self._loop.time()
        try:
            result = await make()
        except grpc.aio.AioRpcError as exc:
            status = _status_details(exc)
            delay = _retry_delay(status)
            code = exc.code().name
            reason = _reason(status)
            detail = f"{reason + ': ' if reason else ''}{exc.details()}"
            self._record(method, started, code, expected(code, delay is not None), detail)
            raise CallFailed(code, delay) from exc
        except CallFailed as exc:  # a wrong result, recorded by the caller's check
            self._record(method, started, exc.code, False, str(exc.__cause__ or ""))
            raise
        except Exception as exc:  # the client broke: a stream that does not decode...
            code = f"CLIENT_{type(exc).__name__}"
            self._record(method, started, code, False, str(exc))
            raise CallFailed(code, None) from exc
        self._record(method, started, "OK", True)
        return result

    # --- operations -----------------------------------------------------------------------

    async def get_table(self, rng: random.Random, stubs: _Stubs) -> None:
        table = rng.choice([self.read_table, *self.write_tables])
        request = table_service_pb2.GetTableRequest(namespace=self.namespace, table=table)
        await self._call("GetTable", lambda: stubs.table.GetTable(request, timeout=CALL_TIMEOUT))

    async def list_tables(self, rng: random.Random, stubs: _Stubs) -> None:
        request = table_service_pb2.ListTablesRequest(namespace=self.namespace, page_size=100)
        await self._call(
            "ListTables", lambda: stubs.table.ListTables(request, timeout=CALL_TIMEOUT)
        )

    async def read_rows(self, rng: random.Random, stubs: _Stubs) -> None:
        if rng.random() < 0.5:
            table, wanted = self.read_table, self.read_filter_rows
            request = read_rows_request(self.namespace, table, row_filter=self.read_filter)
        else:
            table, wanted = rng.choice(self.write_tables), -1
            request = read_rows_request(self.namespace, table, row_limit=READ_LIMIT)

        async def read() -> None:
            got = await read_rows_to_arrow_async(
                stubs.table.ReadRows(request, timeout=CALL_TIMEOUT)
            )
            if got.num_rows != wanted if wanted >= 0 else got.num_rows > READ_LIMIT:
                why = f"{table}: {got.num_rows} rows, expected {wanted if wanted >= 0 else '<='}"
                raise CallFailed("WRONG_RESULT", None) from ValueError(why)

        await self._call("ReadRows", read)

    async def write_rows(self, rng: random.Random, stubs: _Stubs) -> None:
        template = rng.choice(self.write_templates)
        request = type(template)()
        request.CopyFrom(template)
        request.request_id = uuid.uuid4().hex
        for attempt in range(WRITE_ATTEMPTS):
            try:
                response = await self._call(
                    "WriteRows", lambda: stubs.ingest.WriteRows(request, timeout=CALL_TIMEOUT)
                )
            except CallFailed as exc:
                if exc.code not in _RETRIED and not exc.code.startswith("CLIENT_"):
                    return  # a definite refusal: nothing was written
                await asyncio.sleep(exc.retry_after or min(0.05 * 2**attempt, 2.0))
                continue
            self.acked_rows[request.table] += response.result.rows_written
            return
        self.unknown_rows[request.table] += BATCH_ROWS

    async def append_rows(self, rng: random.Random, stubs: _Stubs) -> None:
        requests = rng.choice(self.append_streams)
        table = requests[0].table
        responses = acked = 0
        first_error: tuple[str, bool, str] | None = None

        async def stream() -> None:
            nonlocal responses, acked, first_error
            async for response in stubs.ingest.AppendRows(iter(requests), timeout=CALL_TIMEOUT):
                responses += 1
                if response.HasField("error"):
                    code = _CODE_NAMES.get(response.error.code, str(response.error.code))
                    retry = _retry_delay(response.error) is not None
                    if first_error is None:
                        first_error = (code, expected(code, retry), response.error.message)
                else:
                    acked += response.result.rows_written

        assert self._loop is not None
        started = self._loop.time()
        try:
            await stream()
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            status = _status_details(exc)
            ok = expected(code, _retry_delay(status) is not None)
            self._record("AppendRows", started, code, ok, exc.details() or "")
            self.unknown_rows[table] += (len(requests) - responses) * BATCH_ROWS
            return
        finally:
            self.acked_rows[table] += acked
        if first_error is not None:
            self._record("AppendRows", started, first_error[0], first_error[1], first_error[2])
        elif responses != len(requests):
            self._record("AppendRows", started, "WRONG_RESULT", False, f"{responses} responses")
        else:
            self._record("AppendRows", started, "OK", True)

    async def get_job(self, rng: random.Random, stubs: _Stubs) -> None:
        if not self.job_ids:
            await self.list_jobs(rng, stubs)
            return
        request = job_service_pb2.GetJobRequest(job_id=rng.choice(self.job_ids))
        await self._call("GetJob", lambda: stubs.job.GetJob(request, timeout=CALL_TIMEOUT))

    async def list_jobs(self, rng: random.Random, stubs: _Stubs) -> None:
        request = job_service_pb2.ListJobsRequest(page_size=20)
        await self._call("ListJobs", lambda: stubs.job.ListJobs(request, timeout=CALL_TIMEOUT))

    def _job_spec(self, kind: str, table: str) -> job_pb2.JobSpec:
        if kind == "compact_table":
            return job_pb2.JobSpec(
                compact_table=job_pb2.CompactTableJobSpec(namespace=self.namespace, table=table)
            )
        return job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(statement=f"SELECT count(*) AS n FROM {self.namespace}.{table}")
        )

    async def run_job(self, kind: str, table: str, stubs: _Stubs) -> None:
        """CreateJob, WatchJob to the end, GetJob; the job's outcome is recorded too."""
        assert self._loop is not None
        create = job_service_pb2.CreateJobRequest(
            spec=self._job_spec(kind, table), request_id=uuid.uuid4().hex
        )
        started = self._loop.time()
        created = await self._call(
            "CreateJob", lambda: stubs.job.CreateJob(create, timeout=CALL_TIMEOUT)
        )
        job = created.job
        self.job_ids.append(job.id)

        async def watch() -> job_pb2.Job:
            last = created.job
            request = job_service_pb2.WatchJobRequest(job_id=last.id)
            async for update in stubs.job.WatchJob(request, timeout=WATCH_TIMEOUT):
                last = update.job
            return last

        job = await self._call("WatchJob", watch)
        got = await self._call(
            "GetJob",
            lambda: stubs.job.GetJob(
                job_service_pb2.GetJobRequest(job_id=job.id), timeout=CALL_TIMEOUT
            ),
        )
        job = got.job
        label = f"job {kind}"
        if job.state == job_pb2.JOB_STATE_SUCCEEDED:
            self.jobs[f"{kind} SUCCEEDED"] += 1
            self.job_seconds[kind].append(self._loop.time() - started)
            self._record(label, started, "OK", True, rpc=False)
            return
        state = job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
        code = _CODE_NAMES.get(job.error.code, str(job.error.code)) if job.error.code else state
        self.jobs[f"{kind} {state} {code}"] += 1
        ok = job.state == job_pb2.JOB_STATE_FAILED and code == "ABORTED"
        self._record(label, started, code, ok, f"{state}: {job.error.message}", rpc=False)

    # --- the run --------------------------------------------------------------------------

    async def run(
        self,
        *,
        clients: int,
        job_clients: int,
        channels: int,
        warmup: float,
        window: float,
        rss_kib: Callable[[], int],
        cpu_seconds: Callable[[], float],
        rss_interval: float,
        rss_edge: float,
        seed: int = 8,
    ) -> LoadReport:
        """Runs the clients for ``warmup + window`` seconds; returns what they saw."""
        loop = self._loop = asyncio.get_running_loop()
        operations: dict[str, Callable[[random.Random, _Stubs], Awaitable[None]]] = {
            "GetTable": self.get_table,
            "ListTables": self.list_tables,
            "ReadRows": self.read_rows,
            "WriteRows": self.write_rows,
            "AppendRows": self.append_rows,
            "GetJob": self.get_job,
            "ListJobs": self.list_jobs,
        }
        names = [name for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        # Each channel its own connection: channels with the same options share one otherwise.
        options = [*self.channel_options, ("grpc.use_local_subchannel_pool", 1)]
        opened = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(channels)]
        all_stubs = [_Stubs(c) for c in opened]
        self._measure_from = loop.time() + warmup
        stop_at = self._measure_from + window
        rss: list[tuple[float, int]] = []
        marks: dict[str, tuple[float, float]] = {}

        async def mixed(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            stubs = all_stubs[index % channels]
            while loop.time() < stop_at:
                name = rng.choices(names, weights)[0]
                try:
                    await operations[name](rng, stubs)
                except CallFailed as exc:
                    await asyncio.sleep(exc.retry_after or 0.05)

        async def jobs(index: int) -> None:
            stubs = all_stubs[index % channels]
            for n in range(1_000_000):
                if loop.time() >= stop_at:
                    return
                kind = JOB_CYCLE[(n + index) % len(JOB_CYCLE)]
                table = self.write_tables[(n + index) % len(self.write_tables)]
                try:
                    await self.run_job(kind, table, stubs)
                except CallFailed as exc:
                    await asyncio.sleep(exc.retry_after or 0.5)

        async def sample() -> None:
            # RSS at the end of the warm-up and at the end of the window (both under load),
            # and every rss_interval in between; CPU at the same two marks.
            await asyncio.sleep(max(0.0, self._measure_from - loop.time()))
            marks["start"] = (cpu_seconds(), time.process_time())
            while True:
                now = loop.time()
                rss.append((now - self._measure_from, rss_kib()))
                if now >= stop_at:
                    break
                await asyncio.sleep(min(rss_interval, max(0.0, stop_at - now)))
            marks["end"] = (cpu_seconds(), time.process_time())

        try:
            await asyncio.gather(
                sample(),
                *(jobs(i) for i in range(job_clients)),
                *(mixed(i) for i in range(job_clients, clients)),
            )
        finally:
            for channel in opened:
                await channel.close()
        (cpu0, client0), (cpu1, client1) = marks["start"], marks["end"]
        return LoadReport(
            clients=clients,
            job_clients=job_clients,
            channels=channels,
            warmup=warmup,
            window=window,
            calls=self.calls,
            unexpected_examples=self.unexpected_examples,
            acked_rows=dict(self.acked_rows),
            unknown_rows=dict(self.unknown_rows),
            jobs=self.jobs,
            job_seconds=dict(self.job_seconds),
            rss_kib=rss,
            rss_edge=rss_edge,
            server_cores=(cpu1 - cpu0) / window,
            client_cores=(client1 - client0) / window,
        )


class _Stubs:
    """The three service stubs on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.table = table_service_pb2_grpc.TableServiceStub(channel)
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self.job = job_service_pb2_grpc.JobServiceStub(channel)
