"""Configuration: defaults, precedence (flags > env > _FILE secrets > config file), masking."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.subprocess_coverage import coverage_env
from lakehouse.config import ConfigError, load_settings, masked


def test_defaults_are_the_embedded_sqlite_catalog_and_local_warehouse(tmp_path: Path) -> None:
    s = load_settings({"data_dir": tmp_path})
    assert s.grpc_port == 50051
    assert s.http_port == 9180
    assert s.catalog_uri == f"sqlite:///{tmp_path.resolve() / 'catalog.db'}"
    assert s.warehouse == (tmp_path / "warehouse").resolve().as_uri()


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "lakehouse.yaml"
    cfg.write_text("grpc_port: 1111\nhttp_port: 2222\nlog_level: DEBUG\ns3:\n  region: eu-west-1\n")
    monkeypatch.setenv("LAKEHOUSE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("LAKEHOUSE_HTTP_PORT", "3333")
    monkeypatch.setenv("LAKEHOUSE_S3__ENDPOINT_URL", "http://minio:9000")
    s = load_settings({"grpc_port": 4444})
    assert (s.grpc_port, s.http_port, s.log_level) == (4444, 3333, "DEBUG")
    assert (s.s3.region, s.s3.endpoint_url, s.s3.use_path_style) == (
        "eu-west-1",
        "http://minio:9000",
        True,
    )


def test_secrets_come_from_files_and_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    monkeypatch.setenv("LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE", str(secret))
    monkeypatch.setenv("LAKEHOUSE_CATALOG__URI", "postgresql+psycopg2://u:pw-in-url@db/x")
    s = load_settings()
    assert s.s3.secret_access_key is not None
    assert s.s3.secret_access_key.get_secret_value() == "s3cr3t-value"
    text = json.dumps(masked(s))
    assert "s3cr3t-value" not in text
    assert "pw-in-url" not in text
    assert "**********" in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LAKEHOUSE_GRPC_PORT": "70000"}, "grpc_port"),
        ({"LAKEHOUSE_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"LAKEHOUSE_CATALOG__TYPE": "rest"}, "catalog.uri is required"),
        (
            {"LAKEHOUSE_INGEST__HANDOFF_RETENTION_SECONDS": "30"},
            "handoff_retention_seconds must be at least the longer of",
        ),
        (  # the timeout (60 s) plus the margin is 120 s
            {"LAKEHOUSE_INGEST__HANDOFF_RETENTION_SECONDS": "119"},
            "handoff_retention_seconds must be at least the longer of",
        ),
        (
            {
                "LAKEHOUSE_INGEST__HANDOFF_RETENTION_SECONDS": "90",
                "LAKEHOUSE_INGEST__HANDOFF_TIMEOUT_SECONDS": "5",
                "LAKEHOUSE_INGEST__HANDOFF_SAFETY_POLL_MS": "40000",
            },
            "plus 60 s",
        ),
        ({"LAKEHOUSE_NO_SUCH_SETTING": "1"}, "unknown setting LAKEHOUSE_NO_SUCH_SETTING"),
        ({"LAKEHOUSE_CONFIG_FILE": "/nonexistent.yaml"}, "does not exist"),
        ({"LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE": "/nonexistent"}, "cannot read"),
    ],
)
def test_invalid_config_is_one_clear_line(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_cli_exits_2_on_invalid_config_before_binding(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LAKEHOUSE_GRPC_PORT": "not-a-port", **coverage_env()}
    proc = subprocess.run(
        [sys.executable, "-m", "lakehouse_cmd.lakehouse", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "grpc_port" in proc.stderr
    assert not (tmp_path / "catalog.db").exists()


def test_cli_config_prints_effective_config_masked(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "LAKEHOUSE_S3__ACCESS_KEY_ID": "AKIA-very-secret",
        "LAKEHOUSE_S3__SECRET_ACCESS_KEY": "also-secret",
        **coverage_env(),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lakehouse_cmd.lakehouse", "config", "--grpc-port", "6000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["grpc_port"] == 6000
    assert data["s3"]["access_key_id"] == "**********"
    # the setting names may say "secret"; no value may
    names = ("secret_access_key", "jwt_secret")
    values = proc.stdout
    for name in names:
        values = values.replace(name, "")
    assert "secret" not in values


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    from pydantic import BaseModel

    from lakehouse.config import Settings

    def names(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += names(ann, f"{prefix}{name.upper()}__")
            else:
                assert field.description, f"{prefix}{name.upper()} has no docstring"
                out.append(f"{prefix}{name.upper()}")
        return out

    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    missing = [n for n in names(Settings, "LAKEHOUSE_") if f"`{n}`" not in page]
    assert missing == []
