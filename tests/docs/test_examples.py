"""Every grpcurl and buf curl command and Python example of README.md and docs/**.md runs,
as written, against a real ``lakehouse serve``, so a renamed field or method fails here, not in
a newcomer's first hour.

An example is a fenced block in ``python``, or in ``sh`` when it calls grpcurl (``grpcurl``
or the walkthrough's ``$G``) or ``buf curl``; other shell blocks (``make``, ``helm``,
``systemctl``...) are not run. Each page runs in order against a server of its own, after the
README's walkthrough (which creates ``sales.orders`` and writes two rows): shell blocks in
``bash -euo pipefail`` with ``G`` set as the walkthrough sets it, Python blocks one after
another in one namespace, so a snippet may use what an earlier one on its page defined. Only
the addresses change: ``localhost:50051`` and ``lakehouse:50051`` (``lakehouse.example:50051``
with TLS) become the test server's gRPC port (in buf curl's ``http://localhost:50051/...`` URLs
too), ``localhost:9180`` its HTTP port, ``localhost:50052`` its Arrow Flight port.
``grpcurl`` and ``.venv/bin/grpcurl``, ``buf`` and ``.venv/bin/buf`` are the real binaries of
the dev venv. A grpcurl or buf curl call that fails
exits non-zero, and so fails the test; so does a Python example that raises.

An HTML comment right above a block changes how it runs:

- ``<!-- example: server api-key -->``: against a server with authentication on and one
  viewer API key, in ``$LAKEHOUSE_KEY`` (no walkthrough first);
- ``<!-- example: server tls -->`` / ``server mtls``: against a server with TLS on its gRPC
  port (mTLS: client certificates required), the CA in ``ca.crt`` and (mTLS) the client's
  certificate in ``client.crt`` and ``client.key`` of the working folder;
- ``<!-- example: not run: REASON -->``: not run; the reason must name the test file that
  covers the block, and that file must exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fixtures.certs import TestCA
from fixtures.doc_pages import doc_pages
from fixtures.net import LOOPBACK
from fixtures.serve_process import ServeProcess, serve_process

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = doc_pages()
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->$")
SHELL_LANGUAGES = {"sh", "bash", "shell"}
PYTHON_LANGUAGES = {"python", "py"}
#: What the walkthrough sets ``G`` to; pages after it use ``$G`` the same way.
G = ".venv-run/bin/grpcurl -plaintext"
BLOCK_TIMEOUT_SECONDS = 120
#: A viewer API key of the ``api-key`` server (what ``lakehouse api-key create`` prints).
API_KEY = "lh_docs-examples-viewer-key"


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    directive: str  # "" when the block has none

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_example(self) -> bool:
        if self.language in PYTHON_LANGUAGES:
            return True
        return self.language in SHELL_LANGUAGES and any(
            tool in self.text for tool in ("grpcurl", "$G", "buf curl")
        )

    @property
    def server(self) -> str:
        match = re.fullmatch(r"server ([\w-]+)", self.directive)
        return match.group(1) if match else "default"


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        directive = DIRECTIVE.match(before.strip())
        found.append(
            Block(
                page,
                start + 1,
                match.group(1).lower(),
                "\n".join(lines[start + 1 : end]) + "\n",
                directive.group(1) if directive else "",
            )
        )
        index = end + 1
    return found


def examples(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.is_example]


WALKTHROUGH = examples(README)
PAGES_WITH_EXAMPLES = [p for p in PAGES if examples(p)]


# -- running them ----------------------------------------------------------------------------


@dataclasses.dataclass
class Sandbox:
    """The working folder examples run in: ``.venv-run/bin/grpcurl`` (``make grpcurl``'s),
    ``.venv/bin/grpcurl`` (the dev venv's) and ``grpcurl`` on PATH are the real binary, and the
    same three ``buf``; the CA and client certificate of the TLS servers lie there
    too."""

    cwd: Path
    env: dict[str, str]
    python: dict[str, Any] = dataclasses.field(default_factory=dict)


@pytest.fixture
def sandbox(tmp_path: Path, grpcurl: Path, buf: Path) -> Sandbox:
    cwd = tmp_path / "cwd"
    bin_dir = cwd / ".venv-run" / "bin"
    for venv in (".venv-run", ".venv"):
        (cwd / venv / "bin").mkdir(parents=True)
        (cwd / venv / "bin" / "grpcurl").symlink_to(grpcurl)
        (cwd / venv / "bin" / "buf").symlink_to(buf)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    return Sandbox(cwd, env)


def _addresses(text: str, server: ServeProcess) -> str:
    grpc_address = f"{LOOPBACK}:{server.grpc_port}"
    text = re.sub(r"\b(localhost|lakehouse):50051\b", grpc_address, text)
    text = re.sub(r"\blakehouse\.example:50051\b", f"localhost:{server.grpc_port}", text)
    text = re.sub(r"\blocalhost:50052\b", f"{LOOPBACK}:{server.flight_port}", text)
    return re.sub(r"\blocalhost:9180\b", f"{LOOPBACK}:{server.http_port}", text)


def run_block(block: Block, server: ServeProcess, sandbox: Sandbox) -> None:
    text = _addresses(block.text, server)
    if block.language in PYTHON_LANGUAGES:
        code = compile(text, block.where, "exec")
        try:
            exec(code, sandbox.python)
        except Exception as exc:
            raise AssertionError(f"{block.where} raised {exc!r}\n{block.text}") from exc
        return
    script = f'set -euo pipefail\nG="{G}"\n{text}'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=sandbox.cwd,
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, (
        f"{block.where} exited {result.returncode}\n{block.text}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}\n{server.logs()}"
    )


@contextlib.contextmanager
def server_for(kind: str, tmp_path: Path, sandbox: Sandbox) -> Iterator[ServeProcess]:
    workdir = tmp_path / f"server-{kind}"
    # Every example server serves Arrow Flight too (docs/flight.md; localhost:50052).
    env: dict[str, str] = {"LAKEHOUSE_FLIGHT_HOST": LOOPBACK, "LAKEHOUSE_FLIGHT_PORT": "0"}
    credentials = None
    if kind == "api-key":
        key = {"name": "docs", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}
        env["LAKEHOUSE_AUTH__API_KEYS"] = json.dumps([{**key, "role": "viewer"}])
        sandbox.env["LAKEHOUSE_KEY"] = API_KEY
    elif kind in ("tls", "mtls"):
        ca = TestCA("docs examples CA")
        pki = tmp_path / "pki"
        cert_file, key_file = ca.issue("lakehouse", server=True).write(pki, "server")
        env["LAKEHOUSE_TLS__CERT_FILE"] = str(cert_file)
        env["LAKEHOUSE_TLS__KEY_FILE"] = str(key_file)
        ca.write(sandbox.cwd, "ca")
        if kind == "mtls":
            client = ca.issue("etl.internal", client=True)
            client.write(sandbox.cwd, "client")
            env["LAKEHOUSE_TLS__CLIENT_CA_FILE"] = str(sandbox.cwd / "ca.crt")
            env["LAKEHOUSE_TLS__REQUIRE_CLIENT_CERT"] = "true"
            credentials = grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
        else:
            credentials = grpc.ssl_channel_credentials(ca.cert_pem)
    else:
        assert kind == "default", f"unknown example server {kind!r}"
    with serve_process(workdir, env, name=kind, credentials=credentials) as server:
        yield server


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_examples_of_the_page_run_as_written(
    page: Path, tmp_path: Path, sandbox: Sandbox
) -> None:
    page_examples = [b for b in examples(page) if not b.directive.startswith("not run")]
    by_server: dict[str, list[Block]] = {}
    for block in page_examples:
        by_server.setdefault(block.server, []).append(block)
    for kind, kind_blocks in by_server.items():
        with server_for(kind, tmp_path, sandbox) as server:
            if kind == "default" and page != README:
                for block in WALKTHROUGH:
                    run_block(block, server, Sandbox(sandbox.cwd, sandbox.env))
            for block in kind_blocks:
                run_block(block, server, sandbox)


# -- the rules themselves --------------------------------------------------------------------


def test_the_walkthrough_and_the_guides_have_examples() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES_WITH_EXAMPLES}
    assert {
        "README.md",
        "docs/tables.md",
        "docs/ingest.md",
        "docs/jobs.md",
        "docs/row-changes.md",
    } <= names
    assert any(b.language in PYTHON_LANGUAGES for b in examples(ROOT / "docs" / "client.md"))


def test_every_directive_is_known_and_every_skip_names_an_existing_test() -> None:
    problems = []
    for page in PAGES:
        for block in blocks(page):
            directive = block.directive
            if not directive:
                continue
            if not block.is_example:
                problems.append(f"{block.where}: a directive on a block that is no example")
            elif directive.startswith("not run:"):
                named = re.findall(r"tests/[\w/]+\.py", directive)
                if not named or not all((ROOT / n).is_file() for n in named):
                    problems.append(f"{block.where}: name the existing test that covers it")
            elif block.server not in ("api-key", "tls", "mtls") or directive != (
                f"server {block.server}"
            ):
                problems.append(f"{block.where}: unknown directive {directive!r}")
    assert not problems, "\n".join(problems)


def test_a_stale_example_fails(tmp_path: Path, sandbox: Sandbox) -> None:
    """A renamed field, or a method that is gone, makes the block fail."""
    stale = [
        '$G -d \'{"namespace": "sales", "tabel": "orders"}\' localhost:50051 '
        "lakehouse.v1.TableService/GetTable\n",
        "$G localhost:50051 lakehouse.v1.TableService/DropTable\n",
        "buf curl --protocol grpc --http2-prior-knowledge "
        '-d \'{"namespace": "sales", "tabel": "orders"}\' '
        "http://localhost:50051/lakehouse.v1.TableService/GetTable\n",
    ]
    with server_for("default", tmp_path, sandbox) as server:
        for text in stale:
            with pytest.raises(AssertionError, match="exited"):
                run_block(Block(README, 0, "sh", text, ""), server, sandbox)
        with pytest.raises(AssertionError, match="raised"):
            run_block(
                Block(README, 0, "python", "from lakehouse.v1 import tabel_service_pb2\n", ""),
                server,
                sandbox,
            )
