"""The Go client (gen/go/lakehouse/v1) end to end, against a real ``lakehouse serve``.

docs/clients/go.md's build commands, run as written, build the page's example program
(docs/clients/go/example) with Debian's Go toolchain and packages; the page's run command then
runs it against a server with authentication on and a developer API key made by
``lakehouse api-key create``. The tests check what a user of the program would: the rows read
back are the rows sent, the resent request wrote nothing (three rows, not five; a second run
writes nothing either), the refused call's ErrorInfo reason is ``TABLE_NOT_FOUND``, and a call
without the key is refused and changes nothing. The table is read again through the Python
stubs, so the program's own report is not the only witness. The program's output is the one
the page shows, and the program is gofmt-formatted and `go vet` clean.

Go is installed by tests/tools/install-system-deps.sh (``make test`` runs it); without it the
tests fail, they are not skipped.
"""

from __future__ import annotations

import dataclasses
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
from google.protobuf import json_format

from fixtures.serve_process import LAKEHOUSE, ServeProcess, serve_process
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    rows_pb2,
    table_service_pb2,
    table_service_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "clients" / "go.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: What the program writes (docs/clients/go/example/main.go's ``rows``).
ROWS_SENT = 3
BUILD_TIMEOUT_SECONDS = 400
RUN_TIMEOUT_SECONDS = 90

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclasses.dataclass(frozen=True)
class Example:
    """The built program, the folder the page's commands run in, and a server for it."""

    cwd: Path
    env: dict[str, str]
    server: ServeProcess
    key: str


def page_block(language: str, containing: str) -> str:
    """The page's one ``language`` block that contains ``containing``."""
    found = [
        text
        for lang, text in BLOCK.findall(PAGE.read_text())
        if lang == language and containing in text
    ]
    assert len(found) == 1, f"{PAGE.name}: expected one {language} block with {containing!r}"
    return found[0]


def page_command(containing: str) -> str:
    """The page's ``sh`` block that contains ``containing``."""
    return page_block("sh", containing)


def output_lines(text: str) -> list[str]:
    """The program's output lines, snapshot ids blanked (they vary) and sorted (the order of
    rows read back is the order of the table's files, which is not fixed)."""
    return sorted(re.sub(r"snapshot \d+", "snapshot N", line) for line in text.splitlines())


def run_bash(script: str, example_cwd: Path, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=example_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{script}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "go is not installed: run `bash tests/tools/install-system-deps.sh` (Debian's "
            "golang-go, protoc-gen-go, protoc-gen-go-grpc and the Go gRPC packages)",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("go-client")
    # The page's commands run from the repository root; this folder looks like one (the
    # sources are links), so what they build lands here and not in the checkout.
    cwd = base / "root"
    cwd.mkdir()
    for name in ("gen", "docs"):
        (cwd / name).symlink_to(ROOT / name)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "GOCACHE": str(base / "go-cache"),
        "LANG": "C.UTF-8",
    }
    run_bash(page_command("go build"), cwd, env, BUILD_TIMEOUT_SECONDS)

    created = subprocess.run(
        [LAKEHOUSE, "api-key", "create", "--name", "go-client", "--role", "developer", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = json.loads(created.stdout)
    server_env = {"LAKEHOUSE_AUTH__API_KEYS": json.dumps([key["entry"]])}
    with serve_process(base / "server", server_env, name="go-client") as server:
        yield Example(cwd, env, server, key["key"])


def run_example(example: Example, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The page's run command, its address made the test server's (``key`` None: no key)."""
    command = page_command("lakehouse-go-example -addr").strip()
    command = command.replace("localhost:50051", example.server.target)
    if key is None:
        command = command.replace(' -key "$LAKEHOUSE_KEY"', "")
    env = {**example.env, **({"LAKEHOUSE_KEY": key} if key is not None else {})}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", " ".join([command, *args])],
        cwd=example.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


def rows_printed(output: str, prefix: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    rows = [json.loads(line[len(prefix) :]) for line in lines]
    return sorted(rows, key=lambda row: row["id"])


def rows_in_table(example: Example, namespace: str, table: str) -> list[dict[str, Any]]:
    """The table read through the Python stubs, as JSON rows sorted by id."""
    metadata = (("authorization", f"Bearer {example.key}"),)
    with grpc.insecure_channel(example.server.target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        request = table_service_pb2.ReadRowsRequest(
            namespace=namespace, table=table, format=rows_pb2.ROW_FORMAT_JSON
        )
        rows = [
            json_format.MessageToDict(row)
            for response in stub.ReadRows(request, metadata=metadata, timeout=30)
            for row in response.json_rows.rows
        ]
    return sorted(rows, key=lambda row: row["id"])


def test_the_example_writes_once_reads_back_and_reads_the_error_reason(example: Example) -> None:
    first = run_example(example, example.key)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{example.server.logs()}"
    out = first.stdout
    assert "created namespace go_example" in out
    assert "created table go_example.orders" in out
    acks = [line for line in out.splitlines() if line.startswith("offset ")]
    assert acks[0].startswith("offset 0: wrote 2 rows in snapshot ")
    assert acks[1].startswith("offset 2: wrote 1 rows in snapshot ")
    # The resend of offset 0, as after a lost acknowledgement: nothing written twice.
    assert acks[2] == "offset 0: already written, nothing written again"
    assert len(acks) == 3

    sent = rows_printed(out, "sent row ")
    assert len(sent) == ROWS_SENT
    assert f"read {ROWS_SENT} rows from go_example.orders" in out
    assert rows_printed(out, "read row ") == sent
    assert rows_in_table(example, "go_example", "orders") == sent

    assert "GetTable go_example.no_such_table refused: code NotFound, reason TABLE_NOT_FOUND" in out
    # What the page says the program prints is what it prints.
    assert output_lines(out) == output_lines(page_block("text", "created namespace"))

    # A second run (a restarted writer with the same id) writes nothing: the offsets are the
    # table's, across streams and processes.
    second = run_example(example, example.key)
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    acks = [line for line in second.stdout.splitlines() if line.startswith("offset ")]
    assert acks == [
        "offset 0: already written, nothing written again",
        "offset 2: already written, nothing written again",
        "offset 0: already written, nothing written again",
    ]
    assert "namespace go_example exists already" in second.stdout
    assert rows_in_table(example, "go_example", "orders") == sent
    with grpc.insecure_channel(example.server.target) as channel:
        writer = ingest_service_pb2_grpc.IngestServiceStub(channel).GetWriter(
            ingest_service_pb2.GetWriterRequest(
                namespace="go_example", table="orders", writer_id="go-example-1"
            ),
            metadata=(("authorization", f"Bearer {example.key}"),),
            timeout=30,
        )
    assert writer.writer.next_offset == ROWS_SENT


def test_without_the_key_the_call_is_refused_and_nothing_is_created(example: Example) -> None:
    refused = run_example(example, None, "-namespace", "go_without_key")
    assert refused.returncode == 1, refused.stdout
    assert "CreateNamespace refused: code Unauthenticated, reason UNAUTHENTICATED" in refused.stderr
    assert "created" not in refused.stdout

    with grpc.insecure_channel(example.server.target) as channel:
        names = table_service_pb2_grpc.TableServiceStub(channel).ListNamespaces(
            table_service_pb2.ListNamespacesRequest(),
            metadata=(("authorization", f"Bearer {example.key}"),),
            timeout=30,
        )
    assert "go_without_key" not in [n.name for n in names.namespaces]


def test_the_example_is_gofmt_formatted_and_go_vet_clean(example: Example) -> None:
    """The program a newcomer copies is formatted as Go code is, and `go vet` finds nothing
    (ruff and mypy cover the Python; this is their Go counterpart)."""
    gofmt = subprocess.run(
        ["gofmt", "-l", "docs/clients/go"],
        cwd=example.cwd,
        env=example.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (gofmt.returncode, gofmt.stdout, gofmt.stderr) == (0, "", "")
    gopath = f"{example.cwd / '.build' / 'gopath'}{os.pathsep}/usr/share/gocode"
    vet_env = {**example.env, "GO111MODULE": "off", "CGO_ENABLED": "0", "GOPATH": gopath}
    vet = subprocess.run(
        ["go", "vet", "./docs/clients/go/example"],
        cwd=example.cwd,
        env=vet_env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert vet.returncode == 0, vet.stderr
