"""The command line of the harness: ``python -m bench --help``."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from bench.backends import BACKENDS, BackendError, start_backend
from bench.harness import (
    BackendRun,
    BenchContext,
    HarnessError,
    Result,
    Scenario,
    machine_info,
    make_workdir,
    run_scenario,
    write_results,
)
from bench.scenarios import SCENARIOS

DEFAULT_OUT = Path(__file__).resolve().parent
ALL = "all"


def _parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the lakehouse benchmark scenarios against a separate server process.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short durations (CI): a few minutes for both backends",
    )
    parser.add_argument(
        "--backend",
        choices=(ALL, *BACKENDS),
        default=ALL,
        help=f"{ALL} (the default): {' then '.join(BACKENDS)}, each on fresh servers; "
        "or only one of them",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME[,NAME]",
        help=f"run only these scenarios (and the ones they take limits from): {', '.join(names)}",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and results.md"
    )
    parser.add_argument(
        "--server-log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the server's log level (INFO, the default, logs one line per call, as deployed)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the server data dirs and logs"
    )
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: every finally stops what it started


def _run_backend(
    name: str,
    selected: list[str],
    scenarios: dict[str, Scenario],
    *,
    quick: bool,
    workdir: Path,
    server_log_level: str,
) -> BackendRun:
    """Starts ``name``'s services and runs the selected scenarios on fresh servers of its own.

    A backend that cannot start (or a harness failure on it) is recorded in the returned run,
    with every scenario it did not get to as an ``ERROR not run`` result (not counted as a
    scenario that raised: the run exits 2 for the backend), so that the next backend still runs.
    """
    started = time.perf_counter()
    run = BackendRun(name)
    ctx: BenchContext | None = None
    print(f"bench: backend {name}: starting; work dir {workdir}", file=sys.stderr)
    try:
        with start_backend(name) as backend:
            run.notes = backend.notes
            ctx = BenchContext(
                backend=backend,
                quick=quick,
                workdir=workdir,
                server_log_level=server_log_level,
                scenarios=scenarios,
            )
            try:
                for scenario in selected:
                    if scenario not in ctx.results:
                        ctx.results[scenario] = run_scenario(ctx, scenario)
            finally:
                if ctx.server is not None:
                    ctx.server.stop()
    except (BackendError, HarnessError) as exc:
        run.error = str(exc)
    except Exception as exc:  # anything else that broke the set-up: the next backend still runs
        traceback.print_exc(file=sys.stderr)
        run.error = f"{type(exc).__name__}: {exc}"
    run.results = list(ctx.results.values()) if ctx is not None else []
    if run.error is not None:
        print(f"bench: backend {name} FAILED: {run.error}", file=sys.stderr)
        reason = run.error.splitlines()[0] if run.error else "unknown"
        done = {r.name for r in run.results}
        run.results += [
            Result(
                scenario,
                None,
                "",
                notes=f"ERROR not run: the backend could not run: {reason}",
                backend=name,
            )
            for scenario in selected
            if scenario not in done
        ]
    run.run_seconds = round(time.perf_counter() - started, 1)
    print(f"bench: backend {name}: done in {run.run_seconds:.0f}s", file=sys.stderr)
    return run


def main(argv: list[str] | None = None) -> int:
    """Runs the selected scenarios on the selected backends, one after the other.

    Returns 0, 1 (a scenario raised) or 2 (the harness could not run on a backend).
    """
    by_name = {fn.__name__: fn for fn in SCENARIOS}
    args = _parser(list(by_name)).parse_args(argv)
    if args.list:
        for name, fn in by_name.items():
            print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    selected = list(by_name)
    if args.only:
        selected = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in selected if n not in by_name]
        if unknown:
            print(f"bench: unknown scenario(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
    backends = list(BACKENDS) if args.backend == ALL else [args.backend]
    signal.signal(signal.SIGTERM, _on_sigterm)

    started = time.perf_counter()
    machine = machine_info(args.quick)
    runs: list[BackendRun] = []
    workdir = make_workdir()
    print(
        f"bench: backends {', '.join(backends)}{' (quick)' if args.quick else ''}, "
        f"scenarios {', '.join(selected)}; work dir {workdir}",
        file=sys.stderr,
    )
    try:
        for backend in backends:
            runs.append(
                _run_backend(
                    backend,
                    selected,
                    dict(by_name),
                    quick=args.quick,
                    workdir=workdir / backend,
                    server_log_level=args.server_log_level,
                )
            )
    finally:
        failed = any(run.error is not None or any(r.failed for r in run.results) for run in runs)
        if args.keep_workdir or failed or len(runs) < len(backends):
            print(f"bench: server data and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    machine["run_seconds"] = round(time.perf_counter() - started, 1)
    table = write_results(args.out, machine, runs)
    print(table)
    print(f"bench: wrote {args.out / 'results.json'} and results.md", file=sys.stderr)
    code = 0
    broken = [f"{r.backend} {r.name}" for run in runs for r in run.results if r.failed]
    if broken:
        print(f"bench: FAILED: scenario(s) raised: {', '.join(broken)}", file=sys.stderr)
        code = 1
    for run in runs:
        if run.error is not None:
            print(f"bench: FAILED: backend {run.name}: {run.error}", file=sys.stderr)
            code = 2
    return code
