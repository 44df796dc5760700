"""The harness: server processes, the context scenarios run in, load loops and the results.

A scenario is a function ``(ctx: BenchContext) -> Result`` (or an ``async def``), listed in
``bench.scenarios.SCENARIOS``. The harness starts one server (the *shared* server) before the
first scenario and hands every scenario the same context; scenarios that need a fresh process
(start-up time, idle memory, two replicas...) spawn their own with ``ctx.spawn_server()``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import inspect
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.backends import Backend

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_SECONDS = 90.0

# Every server this process started and has not stopped yet: killed at exit whatever happens.
_LIVE_SERVERS: set[ServerProcess] = set()


# --- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario's figure, as written to bench/results.json.

    ``ratio`` is ``value / limit_value`` (filled in by the harness when both are known).
    ``goal_ratio`` is the ratio the issue asks for: a floor when ``better`` is ``"higher"`` (the
    default: throughput), a ceiling when it is ``"lower"`` (latency, memory against a bound).
    ``better`` is not part of the JSON schema; the markdown table shows it as >= or <=.
    ``backend`` is the backend the scenario ran on (set by the harness, not by the scenario).
    """

    name: str
    value: float | None
    unit: str
    limit_name: str | None = None
    limit_value: float | None = None
    ratio: float | None = None
    goal_ratio: float | None = None
    notes: str = ""
    backend: str = ""
    better: str = field(default="higher", repr=False)
    failed: bool = field(default=False, repr=False)
    """The scenario raised: the harness is broken (the run exits non-zero). Not in the JSON."""

    def finish(self) -> Result:
        """Computes the ratio from the value and the limit when the scenario left it empty."""
        if (
            self.ratio is None
            and self.value is not None
            and self.limit_value not in (None, 0)
            and self.limit_value is not None
        ):
            self.ratio = self.value / self.limit_value
        return self

    def to_json(self) -> dict[str, Any]:
        """The JSON form: exactly the schema's keys, ``backend`` first."""
        data = dataclasses.asdict(self)
        data.pop("better")
        data.pop("failed")
        return {"backend": data.pop("backend"), **data}

    def goal_status(self) -> str:
        """ "met", "missed" or "" (no goal or no ratio)."""
        if self.goal_ratio is None or self.ratio is None:
            return ""
        ok = (
            self.ratio >= self.goal_ratio
            if self.better == "higher"
            else self.ratio <= self.goal_ratio
        )
        return "met" if ok else "MISSED"


# --- server processes ------------------------------------------------------------------------


class HarnessError(RuntimeError):
    """The harness itself failed (a server did not start, a backend is missing...)."""


class Skip(Exception):
    """Raised by a scenario that does not apply to this run (e.g. an S3-only scenario)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def lakehouse_executable() -> str:
    """The ``lakehouse`` console script of the venv running the harness."""
    beside = Path(sys.executable).parent / "lakehouse"
    if beside.is_file():
        return str(beside)
    found = shutil.which("lakehouse")
    if found is None:
        raise HarnessError("the `lakehouse` command is not installed: run `make install` first")
    return found


# Channel options for polling a server that is still starting: gRPC's default reconnect backoff
# (1 s, growing) would otherwise dominate the start-up time measured.
_POLL_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


class ServerProcess:
    """One ``lakehouse serve`` process on 127.0.0.1, stdout/stderr in a log file."""

    def __init__(
        self,
        backend: Backend,
        workdir: Path,
        *,
        log_level: str,
        label: str,
        data_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.workdir = workdir
        self.log_level = log_level
        self.label = label
        self.data_dir = data_dir if data_dir is not None else workdir / "data"
        self.log_path = workdir / "server.log"
        self.grpc_port = 0
        self.http_port = 0
        self.flight_port = 0  # the Arrow Flight data plane (flight_* scenarios)
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.port_open_seconds: float | None = None
        self.serving_seconds: float | None = None

    @property
    def target(self) -> str:
        """The gRPC target, ``127.0.0.1:port``."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self.proc is None:
            raise HarnessError(f"server {self.label} is not running")
        return self.proc.pid

    def spawn(self) -> None:
        """Starts the process (returns at once; :meth:`wait_serving` waits for it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port = free_port(), free_port()
        while self.http_port == self.grpc_port:
            self.http_port = free_port()
        self.flight_port = free_port()
        while self.flight_port in (self.grpc_port, self.http_port):
            self.flight_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_")}
        env.update(self.backend.env())
        env.update(
            {
                "LAKEHOUSE_LOG_LEVEL": self.log_level,
                # Shutdown speed is not measured; do not wait for load balancers that are not there.
                "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS": "0",
                "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS": "2",
                "LAKEHOUSE_FLIGHT_HOST": LOOPBACK,
                # The bench process is one caller: the default per-caller rate (1,000 calls/s,
                # bursts of 2,000) would cap the qps scenarios below what the server does. Set
                # high rather than off, so every call still pays the rate limit's check.
                "LAKEHOUSE_QUOTAS__CALLS_PER_SECOND": "1000000",
                "LAKEHOUSE_QUOTAS__BURST_CALLS": "10000000",
            }
        )
        cmd = [
            lakehouse_executable(),
            "serve",
            "--grpc-host",
            LOOPBACK,
            "--grpc-port",
            str(self.grpc_port),
            "--http-host",
            LOOPBACK,
            "--http-port",
            str(self.http_port),
            "--flight-port",
            str(self.flight_port),
            "--data-dir",
            str(self.data_dir),
        ]
        log = self.log_path.open("ab")
        try:
            self.spawned_at = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: killed as a whole
            )
        finally:
            log.close()
        _LIVE_SERVERS.add(self)

    def wait_serving(self, timeout: float) -> float:
        """Polls TCP, then grpc.health.v1.Health/Check, until SERVING; returns seconds since spawn.

        Raises:
            HarnessError: The process exited, or it was not SERVING within ``timeout`` seconds.
        """
        deadline = self.spawned_at + timeout
        while True:  # the port first: cheap, and keeps gRPC's reconnect backoff out of it
            self._check_alive()
            try:
                with socket.create_connection((LOOPBACK, self.grpc_port), timeout=0.2):
                    break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise self._failure(f"gRPC port {self.grpc_port} not open after {timeout:.0f}s")
            time.sleep(0.01)
        self.port_open_seconds = time.perf_counter() - self.spawned_at
        status = "no answer"
        with grpc.insecure_channel(self.target, options=_POLL_CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self.serving_seconds = time.perf_counter() - self.spawned_at
                        return self.serving_seconds
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    status = f"{exc.code().name}: {exc.details()}"
                if time.perf_counter() > deadline:
                    raise self._failure(f"not SERVING after {timeout:.0f}s (last: {status})")
                time.sleep(0.01)

    def rss_kib(self) -> int:
        """VmRSS of the server process, in KiB, from /proc/<pid>/status."""
        return _proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        """VmHWM (peak RSS) of the server process, in KiB."""
        return _proc_status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        return process_cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout`` seconds."""
        proc = self.proc
        _LIVE_SERVERS.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL to the process group at once (the atexit path)."""
        _LIVE_SERVERS.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the server's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self._failure(f"the server exited with code {self.proc.returncode}")

    def _failure(self, what: str) -> HarnessError:
        return HarnessError(
            f"server {self.label} ({self.backend.name}) failed to start: {what}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def _proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise HarnessError(f"/proc/{pid}/status has no {key}")


@atexit.register
def _kill_live_servers() -> None:
    for server in list(_LIVE_SERVERS):
        server.kill()


# --- the context scenarios run in ------------------------------------------------------------

Scenario = Callable[["BenchContext"], "Result | Awaitable[Result]"]


@dataclass
class BenchContext:
    """What a scenario gets: the shared server, the backend, durations, other results."""

    backend: Backend
    quick: bool
    workdir: Path
    server_log_level: str
    scenarios: dict[str, Scenario]
    server: ServerProcess | None = None
    results: dict[str, Result] = field(default_factory=dict)
    fixtures: dict[str, Any] = field(default_factory=dict)
    """Set-up that several scenarios share in this run (e.g. a table written once), by name."""
    _running: set[str] = field(default_factory=set)
    _spawned: int = 0
    _shared_error: str | None = None

    def shared_server(self) -> ServerProcess:
        """The server all load scenarios share, started (and waited for) on first use."""
        if self._shared_error is not None:
            raise HarnessError(f"the shared server did not start (see above): {self._shared_error}")
        if self.server is None:
            server = ServerProcess(
                self.backend,
                self.workdir / "shared",
                log_level=self.server_log_level,
                label="shared",
            )
            server.spawn()
            self.server = server  # stopped by the runner (or atexit) even if it never serves
            try:
                server.wait_serving(SERVER_START_TIMEOUT_SECONDS)
            except HarnessError as exc:
                self._shared_error = str(exc).splitlines()[0]
                server.stop()
                raise
        return self.server

    @property
    def target(self) -> str:
        """The shared server's gRPC target (starts the shared server on first use)."""
        return self.shared_server().target

    def seconds(self, full: float, quick: float) -> float:
        """A duration: ``full`` normally, ``quick`` under --quick."""
        return quick if self.quick else full

    def count(self, full: int, quick: int) -> int:
        """A repetition count: ``full`` normally, ``quick`` under --quick."""
        return quick if self.quick else full

    def result_of(self, name: str) -> Result:
        """Another scenario's result in this run (runs it now if it has not run yet).

        This is how a scenario gets its limit: ``ctx.result_of("health_check_qps").value``.
        """
        if name not in self.results:
            if name in self._running:
                raise HarnessError(f"scenario {name} depends on itself")
            if name not in self.scenarios:
                raise HarnessError(f"no scenario named {name}")
            self.results[name] = run_scenario(self, name)
        result = self.results[name]
        if result.value is None:
            raise HarnessError(f"scenario {name}, needed as a limit, has no value")
        return result

    @contextlib.contextmanager
    def spawn_server(
        self,
        label: str = "extra",
        timeout: float = SERVER_START_TIMEOUT_SECONDS,
        *,
        share_data_dir: bool = False,
        backend: Backend | None = None,
    ) -> Iterator[ServerProcess]:
        """A fresh server on the same backend, SERVING; stopped on exit.

        It gets its own data dir, or with ``share_data_dir`` the shared server's (started if
        need be), so that on ``embedded`` it sees the same SQLite catalog and warehouse: the
        tables a scenario set up there. (``postgres_s3`` servers share the catalog anyway.)
        ``backend`` configures it differently from the run's backend (e.g. the embedded
        SQLite catalog with a warehouse on a moto S3 the scenario started itself).
        """
        data_dir = self.shared_server().data_dir if share_data_dir else None
        self._spawned += 1
        server = ServerProcess(
            backend or self.backend,
            self.workdir / f"{label}-{self._spawned}",
            log_level=self.server_log_level,
            label=f"{label}-{self._spawned}",
            data_dir=data_dir,
        )
        try:
            server.spawn()
            server.wait_serving(timeout)
            yield server
        finally:
            server.stop()

    def aio_channel(self, target: str | None = None) -> grpc.aio.Channel:
        """A grpc.aio channel to the shared server (create it inside the running event loop)."""
        return grpc.aio.insecure_channel(target or self.target)

    def aio_channel_with(
        self, options: list[tuple[str, Any]], target: str | None = None
    ) -> grpc.aio.Channel:
        """As :meth:`aio_channel`, with channel options (e.g. a larger receive limit)."""
        return grpc.aio.insecure_channel(target or self.target, options=options)


def _run_async(fn: Scenario, ctx: BenchContext) -> Any:
    """Runs an ``async def`` scenario in a new event loop.

    When an async scenario asks for another's result (``ctx.result_of`` runs it on demand),
    its loop is already running in this thread: the other one then runs in its own loop in a
    worker thread while the caller waits.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn(ctx))  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-nested") as pool:
        return pool.submit(lambda: asyncio.run(fn(ctx))).result()  # type: ignore[arg-type]


def run_scenario(ctx: BenchContext, name: str) -> Result:
    """Runs one scenario; a scenario that raises becomes a result with no value and the error."""
    ctx._running.add(name)
    started = time.perf_counter()
    try:
        fn = ctx.scenarios[name]
        outcome = _run_async(fn, ctx) if inspect.iscoroutinefunction(fn) else fn(ctx)
        if inspect.isawaitable(outcome):
            raise HarnessError(f"scenario {name} returned an awaitable; make it `async def`")
        result: Result = outcome
        if result.name != name:
            raise HarnessError(f"scenario {name} returned a result named {result.name}")
        result.finish()
    except Skip as exc:
        result = Result(name, None, "", notes=f"skipped: {exc}")
    except Exception as exc:  # one broken scenario does not hide the others' figures
        traceback.print_exc(file=sys.stderr)
        first = str(exc).splitlines()[0] if str(exc) else ""
        result = Result(name, None, "", notes=f"ERROR {type(exc).__name__}: {first}", failed=True)
    finally:
        ctx._running.discard(name)
    result.backend = ctx.backend.name
    print(
        f"bench: {ctx.backend.name} {name} done in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return result


# --- closed-loop load ------------------------------------------------------------------------


@dataclass
class LoadStats:
    """What a closed-loop load run measured (only calls started after the warm-up count)."""

    calls: int
    errors: int
    seconds: float
    latencies: list[float]
    error_examples: list[str]

    @property
    def per_second(self) -> float:
        """Successful calls per second."""
        return (self.calls - self.errors) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile latency (0 < q < 100), nearest rank, in milliseconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[rank] * 1000

    def require_success(self, what: str) -> None:
        """Raises HarnessError when no call succeeded: the server is broken, not slow."""
        if self.calls == self.errors:
            example = self.error_examples[0] if self.error_examples else "no call was made"
            raise HarnessError(f"{what}: no call succeeded ({self.errors} errors, e.g. {example})")

    def notes(self, concurrency: int) -> str:
        """p50/p99 and counts, for a result's notes."""
        text = (
            f"p50 {self.percentile_ms(50):.2f} ms, p99 {self.percentile_ms(99):.2f} ms; "
            f"{concurrency} concurrent streams, {self.calls} calls in {self.seconds:.1f}s, "
            f"{self.errors} errors"
        )
        if self.error_examples:
            text += f" (e.g. {self.error_examples[0]})"
        return text


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
) -> LoadStats:
    """Runs ``concurrency`` coroutines, each awaiting ``call()`` back to back.

    They run for ``warmup + duration`` seconds; calls started during the warm-up are not
    counted. A call that raises counts as an error (the loop goes on).
    """
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + duration
    latencies: list[float] = []
    errors = 0
    examples: list[str] = []

    async def worker() -> None:
        nonlocal errors
        while True:
            started = loop.time()
            if started >= stop_at:
                return
            counted = started >= measure_from
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                if counted:
                    errors += 1
                    if len(examples) < 3:
                        examples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            if counted:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measured = max(loop.time() - measure_from, 1e-9)
    return LoadStats(len(latencies) + errors, errors, measured, latencies, examples)


# --- machine facts and output ----------------------------------------------------------------


@dataclass
class BackendRun:
    """One backend's part of a run: its results, how long it took, and why it stopped early."""

    name: str
    results: list[Result] = field(default_factory=list)
    notes: str = ""
    """What the backend's services were (``Backend.notes``)."""
    run_seconds: float = 0.0
    error: str | None = None
    """Set when the backend (or the harness on it) could not run: the run exits 2."""

    def to_json(self) -> dict[str, Any]:
        """The entry of ``machine.backends`` in results.json."""
        return {
            "name": self.name,
            "notes": self.notes,
            "run_seconds": self.run_seconds,
            "error": self.error,
        }


def machine_info(quick: bool) -> dict[str, Any]:
    """The facts a reader needs to compare two results files (``backends`` is added later)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "quick": quick,
        "grpcio": grpc.__version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "-q", "HEAD") or "none"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _goal(r: Result) -> str:
    if r.goal_ratio is None:
        return ""
    return f"{'>=' if r.better == 'higher' else '<='} {_fmt(r.goal_ratio)}"


def _summary(runs: list[BackendRun]) -> list[str]:
    """One row per scenario, value and ratio side by side for each backend."""
    names: list[str] = []
    by_key: dict[tuple[str, str], Result] = {}
    for run in runs:
        for r in run.results:
            if r.name not in names:
                names.append(r.name)
            by_key[(run.name, r.name)] = r
    header = "| scenario | unit | goal |"
    rule = "| --- | --- | --- |"
    for run in runs:
        header += f" {run.name} | {run.name} ratio |"
        rule += " ---: | ---: |"
    lines = [header, rule]
    for name in names:
        results = [by_key.get((run.name, name)) for run in runs]
        known = [r for r in results if r is not None]
        unit = next((r.unit for r in known if r.unit), "")
        goal = next((_goal(r) for r in known if r.goal_ratio is not None), "")
        row = f"| {name} | {unit} | {goal} |"
        for result in results:
            if result is None:
                row += " not run | |"
            elif result.value is None:
                row += f" {'skipped' if result.notes.startswith('skipped:') else 'ERROR'} | |"
            else:
                status = result.goal_status()
                ratio = _fmt(result.ratio) + (f" {status}" if status else "")
                row += f" {_fmt(result.value, 4)} | {ratio} |"
        lines.append(row)
    return lines


def _scenario_table(results: list[Result]) -> list[str]:
    lines = ["| scenario | value | unit | limit | limit value | ratio | goal | notes |"]
    lines.append("| --- | ---: | --- | --- | ---: | ---: | --- | --- |")
    for r in results:
        goal = _goal(r)
        status = r.goal_status()
        goal += f" ({status})" if status else ""
        lines.append(
            f"| {r.name} | {_fmt(r.value, 4)} | {r.unit} | {_cell(r.limit_name or '')} "
            f"| {_fmt(r.limit_value, 4)} | {_fmt(r.ratio)} | {goal} | {_cell(r.notes)} |"
        )
    return lines


def markdown(machine: dict[str, Any], runs: list[BackendRun]) -> str:
    """The results as markdown: a summary across backends, one table per backend, the machine."""
    lines = ["# lakehouse benchmark results", ""]
    if len(runs) > 1:
        lines += [
            "## All backends",
            "",
            "Each figure and its ratio to its limit, measured on the same backend in this run "
            "(notes and limits in the tables below).",
            "",
            *_summary(runs),
            "",
        ]
    for run in runs:
        lines += [f"## {run.name}", ""]
        about = f"{run.notes}; " if run.notes else ""
        lines.append(f"{about}ran in {run.run_seconds:.0f} s.")
        if run.error is not None:
            lines.append(f"**The backend could not run:** {_cell(run.error.splitlines()[0])}")
        lines += ["", *_scenario_table(run.results), ""]
    lines += ["## Machine", "", "| machine | |", "| --- | --- |"]
    for key, value in machine.items():
        if key == "backends":
            value = ", ".join(
                f"{b['name']} ({b['run_seconds']:.0f} s{', FAILED' if b['error'] else ''})"
                for b in value
            )
        lines.append(f"| {key} | {_cell(str(value))} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, machine: dict[str, Any], runs: list[BackendRun]) -> str:
    """Writes results.json and results.md; returns the markdown.

    ``machine`` gets ``backends`` (one entry per backend run); the scenarios of every backend
    go in one list, each with its ``backend``, backend by backend in the order they ran.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "backends": [run.to_json() for run in runs]}
    payload = {
        "machine": machine,
        "scenarios": [r.to_json() for run in runs for r in run.results],
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = markdown(machine, runs)
    (out_dir / "results.md").write_text(text)
    return text


def make_workdir() -> Path:
    """A temporary folder for server data and logs (the caller deletes it)."""
    return Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
