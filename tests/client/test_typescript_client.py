"""The TypeScript client (gen/ts) end to end: the example program of docs/clients/typescript.md,
built by ``make ts-example`` (a prerequisite of ``make test``), runs on Node against a real
``lakehouse serve`` with API keys on.

What the tests prove: the generated messages and service descriptors talk to the server
through @connectrpc/connect-node's gRPC transport; apache-arrow's IPC stream is accepted by
WriteRows and AppendRows, and ReadRows' Arrow decodes to the rows written (compared with what
the Python client reads from the same table); a resent AppendRows request with a writer id is
acknowledged as already written and not stored twice; the ErrorInfo reason of a refused call
comes out of the grpc-status-details-bin trailer; the API key travels as
``authorization: Bearer`` metadata, and a call without it is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.v1 import rows_pb2, table_service_pb2, table_service_pb2_grpc

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "typescript"
SOURCE = EXAMPLE / "src" / "lakehouse_example.ts"
PROGRAM = EXAMPLE / "dist" / "lakehouse_example.js"
PAGE = ROOT / "docs" / "clients" / "typescript.md"
#: A developer key (creates namespaces and tables, appends): what ``lakehouse api-key create``
#: prints, and the entry that accepts it.
API_KEY = "lh_typescript-client-test-key"
KEY_ENTRY = {
    "name": "typescript",
    "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
    "role": "developer",
}
NAMESPACE, TABLE = "ts_sales", "orders"
#: The rows the program writes: two with WriteRows, three with AppendRows (two of them sent
#: twice).
WRITTEN = [
    {"id": 1, "region": "eu", "amount": 12.5},
    {"id": 2, "region": "us", "amount": 7.0},
    {"id": 3, "region": "eu", "amount": 3.25},
    {"id": 4, "region": "apac", "amount": 40.0},
    {"id": 5, "region": "us", "amount": 5.5},
]
RUN_TIMEOUT_SECONDS = 120


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the TypeScript client needs Node.js 20 or newer")
    return node


@pytest.fixture(scope="module")
def program() -> Path:
    """The built example; missing means `make test` lost its ts-example prerequisite."""
    if not PROGRAM.is_file() or PROGRAM.stat().st_mtime < SOURCE.stat().st_mtime:
        pytest.fail(f"{PROGRAM.relative_to(ROOT)} is missing or stale: run `make ts-example`")
    return PROGRAM


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {"LAKEHOUSE_AUTH__API_KEYS": json.dumps([KEY_ENTRY])}
    with serve_process(tmp_path_factory.mktemp("ts-server"), env, name="ts-client") as proc:
        yield proc


def run_example(program: Path, server: ServeProcess, key: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(server.workdir),
        "LAKEHOUSE_ADDRESS": server.target,
        "LAKEHOUSE_KEY": key,
        "LAKEHOUSE_NAMESPACE": NAMESPACE,
        "LAKEHOUSE_TABLE": TABLE,
    }
    return subprocess.run(
        [_node(), str(program)],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )


def rows_in_server(server: ServeProcess) -> list[dict[str, Any]]:
    """The table's rows as the Python client reads them (JSON format), for comparison."""
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        request = table_service_pb2.ReadRowsRequest(
            namespace=NAMESPACE, table=TABLE, format=rows_pb2.ROW_FORMAT_JSON
        )
        return [
            MessageToDict(row)
            for reply in stub.ReadRows(request, metadata=metadata, timeout=30)
            for row in reply.json_rows.rows
        ]


def _by_id(rows: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """Rows as comparable tuples, sorted by id (JSON numbers may come as int, float or str)."""
    return sorted((int(r["id"]), str(r["region"]), float(r["amount"])) for r in rows)


@pytest.mark.slow
def test_the_example_runs_every_step_against_a_real_server(
    program: Path, server: ServeProcess
) -> None:
    result = run_example(program, server, API_KEY)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}\n{server.logs()}"
    lines = out.splitlines()

    assert f"created namespace {NAMESPACE}" in lines
    assert f"created table {NAMESPACE}.{TABLE}" in lines
    assert re.search(r"^WriteRows: 2 rows written in snapshot [1-9]\d*$", out, re.M), out

    # Exactly once: offset 0 written once, its resend acknowledged as already written.
    appends = [line for line in lines if line.startswith("AppendRows")]
    assert len(appends) == 3, out
    assert re.fullmatch(r"AppendRows offset 0: 2 rows written in snapshot [1-9]\d*", appends[0])
    assert appends[1] == "AppendRows offset 0: already written, nothing written again"
    assert re.fullmatch(r"AppendRows offset 2: 1 rows written in snapshot [1-9]\d*", appends[2])
    assert "GetWriter: ts-example-writer resumes at offset 3" in lines

    # The rows apache-arrow decoded are the rows written, each once; and the server holds
    # exactly those (the Python client reads the same table).
    assert f"ReadRows: {len(WRITTEN)} rows, columns id,region,amount" in lines
    decoded = [json.loads(line.removeprefix("row ")) for line in lines if line.startswith("row ")]
    assert _by_id(decoded) == _by_id(WRITTEN)
    assert _by_id(rows_in_server(server)) == _by_id(WRITTEN)

    # The refused call's ErrorInfo, and a call without the key.
    assert (
        f"GetTable {NAMESPACE}.no_such_table: NotFound reason TABLE_NOT_FOUND domain lakehouse.v1"
        in lines
    )
    assert "ListNamespaces without the API key: Unauthenticated" in lines


@pytest.mark.slow
def test_a_wrong_api_key_is_refused(program: Path, server: ServeProcess) -> None:
    result = run_example(program, server, "lh_not-a-key-of-this-server")
    assert result.returncode != 0
    assert "[unauthenticated] invalid credentials" in result.stderr, result.stderr
    assert "created namespace" not in result.stdout


def test_the_docs_page_shows_the_program_that_runs() -> None:
    """The page's TypeScript block is the program, byte for byte, so what a newcomer copies
    is what the test above ran."""
    blocks = re.findall(r"^```(?:ts|typescript)\n(.*?)^```$", PAGE.read_text(), re.M | re.S)
    assert SOURCE.read_text() in blocks
