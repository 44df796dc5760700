"""The real ``buf curl`` against a real ``lakehouse serve``, through server reflection only.

buf curl asks for reflection ``grpc.reflection.v1`` first and falls back to ``v1alpha``; the
server answers both, so each is checked on its own with ``--reflect-protocol``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

from fixtures.serve_process import ServeProcess, serve_process
from fixtures.tools import run_tool

#: An API key of the authenticated server, with the developer role (may create namespaces).
API_KEY = "lh_buf-curl-developer-key"


def buf_curl(buf: Path, server: ServeProcess, method: str, *args: str) -> tuple[int, str, str]:
    """Runs ``buf curl`` on ``method`` of ``server``; returns exit code, stdout and stderr."""
    result = run_tool(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--timeout",
            "20s",
            *args,
            f"http://{server.target}/{method}",
        ]
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(tmp_path_factory.mktemp("buf-open"), {}) as server:
        yield server


@pytest.fixture(scope="module")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    entry = {"name": "buf", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}
    env = {"LAKEHOUSE_AUTH__API_KEYS": json.dumps([{**entry, "role": "developer"}])}
    with serve_process(tmp_path_factory.mktemp("buf-key"), env) as server:
        yield server


@pytest.mark.parametrize("reflection", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_creates_and_lists_namespaces_through_reflection(
    buf: Path, open_server: ServeProcess, reflection: str
) -> None:
    name = f"buf_{reflection.replace('-', '_')}"
    flags = ("--reflect-protocol", reflection)
    code, out, err = buf_curl(
        buf,
        open_server,
        "lakehouse.v1.TableService/CreateNamespace",
        *flags,
        "-d",
        json.dumps({"name": name, "properties": {"owner": "buf"}}),
    )
    assert code == 0, err
    assert json.loads(out) == {"namespace": {"name": name, "properties": {"owner": "buf"}}}

    code, out, err = buf_curl(
        buf, open_server, "lakehouse.v1.TableService/ListNamespaces", *flags, "-d", "{}"
    )
    assert code == 0, err
    assert name in [ns["name"] for ns in json.loads(out)["namespaces"]]


def test_buf_curl_lists_the_services(buf: Path, open_server: ServeProcess) -> None:
    result = run_tool(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-services",
            f"http://{open_server.target}",
        ]
    )
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert {
        "lakehouse.v1.TableService",
        "lakehouse.v1.IngestService",
        "lakehouse.v1.JobService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)

    # Listing methods resolves every service's file through reflection, v1's own included.
    result = run_tool(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            "grpc-v1",
            "--list-methods",
            f"http://{open_server.target}",
        ]
    )
    assert result.returncode == 0, result.stderr
    methods = result.stdout.split()
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in methods
    assert "lakehouse.v1.TableService/ListNamespaces" in methods


def test_buf_curl_shows_invalid_argument_with_its_reason(
    buf: Path, open_server: ServeProcess
) -> None:
    code, out, err = buf_curl(
        buf,
        open_server,
        "lakehouse.v1.TableService/CreateNamespace",
        "-d",
        json.dumps({"name": "no spaces allowed"}),
    )
    assert code != 0
    assert out == ""
    error = json.loads(err)
    assert error["code"] == "invalid_argument"
    details = {d["type"]: _decoded(d["value"]) for d in error["details"]}
    info = error_details_pb2.ErrorInfo.FromString(details["google.rpc.ErrorInfo"])
    assert (info.reason, info.domain) == ("INVALID_NAME", "lakehouse.v1")
    bad = error_details_pb2.BadRequest.FromString(details["google.rpc.BadRequest"])
    assert [v.field for v in bad.field_violations] == ["name"]


def _decoded(value: str) -> bytes:
    """buf curl's detail bytes: base64 without padding."""
    return base64.b64decode(value + "=" * (-len(value) % 4))


def test_buf_curl_with_an_api_key(buf: Path, key_server: ServeProcess) -> None:
    method = "lakehouse.v1.TableService/ListNamespaces"
    code, _, err = buf_curl(buf, key_server, method, "-d", "{}")
    assert code != 0
    assert json.loads(err)["code"] == "unauthenticated"

    header = ("-H", f"authorization: Bearer {API_KEY}")
    code, out, err = buf_curl(
        buf,
        key_server,
        "lakehouse.v1.TableService/CreateNamespace",
        *header,
        "-d",
        json.dumps({"name": "keyed"}),
    )
    assert code == 0, err
    code, out, err = buf_curl(buf, key_server, method, *header, "-d", "{}")
    assert code == 0, err
    assert [ns["name"] for ns in json.loads(out)["namespaces"]] == ["keyed"]
