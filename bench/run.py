"""The command line of the harness: ``python -m bench --help``."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench.backends import BACKENDS, BackendError, start_backend
from bench.harness import (
    BenchContext,
    HarnessError,
    Result,
    machine_info,
    make_workdir,
    run_scenario,
    write_results,
)
from bench.scenarios import SCENARIOS

DEFAULT_OUT = Path(__file__).resolve().parent


def _parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the lakehouse benchmark scenarios against a separate server process.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short durations (CI): the whole run in < 2 min"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="embedded")
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


def main(argv: list[str] | None = None) -> int:
    """Runs the selected scenarios; returns 0, 1 (a scenario broke) or 2 (the harness did)."""
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
    signal.signal(signal.SIGTERM, _on_sigterm)

    started = time.perf_counter()
    machine = machine_info(args.backend, args.quick)
    results: list[Result] = []
    workdir = make_workdir()
    harness_error: str | None = None
    print(
        f"bench: backend {args.backend}{' (quick)' if args.quick else ''}, "
        f"scenarios {', '.join(selected)}; work dir {workdir}",
        file=sys.stderr,
    )
    try:
        with start_backend(args.backend) as backend:
            machine["backend_notes"] = backend.notes
            ctx = BenchContext(
                backend=backend,
                quick=args.quick,
                workdir=workdir,
                server_log_level=args.server_log_level,
                scenarios=dict(by_name),
            )
            try:
                for name in selected:
                    if name not in ctx.results:
                        ctx.results[name] = run_scenario(ctx, name)
            finally:
                if ctx.server is not None:
                    ctx.server.stop()
                results = list(ctx.results.values())
    except (BackendError, HarnessError) as exc:
        harness_error = str(exc)
    finally:
        failed = harness_error is not None or any(r.failed for r in results)
        if args.keep_workdir or failed:
            print(f"bench: server data and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    machine["run_seconds"] = round(time.perf_counter() - started, 1)
    table = write_results(args.out, machine, results)
    print(table)
    print(f"bench: wrote {args.out / 'results.json'} and results.md", file=sys.stderr)
    if harness_error is not None:
        print(f"bench: FAILED: {harness_error}", file=sys.stderr)
        return 2
    broken = [r.name for r in results if r.failed]
    if broken:
        print(f"bench: FAILED: scenario(s) raised: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0
