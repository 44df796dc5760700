"""The service configuration: one frozen pydantic-settings model, read once at start-up.

Sources, highest priority first: command-line flags, ``LAKEHOUSE_*`` environment variables
(``__`` separates nested fields, e.g. ``LAKEHOUSE_S3__ENDPOINT_URL``), secrets read from
files named by ``LAKEHOUSE_..._FILE`` variables, an optional YAML/JSON/TOML config file, and
the defaults below. With no configuration at all the service runs on the embedded default:
a SQLite catalog and a warehouse folder under ``data_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "LAKEHOUSE_"
FILE_SUFFIX = "_FILE"
CONFIG_FILE_ENV = "LAKEHOUSE_CONFIG_FILE"


class ConfigError(Exception):
    """The configuration is invalid; the message is one line meant for an operator."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class CatalogSettings(_Section):
    """Where the Iceberg catalog lives."""

    type: Literal["sql", "rest"] = "sql"
    """Catalog kind: ``sql`` (SQLite or PostgreSQL, Iceberg's JDBC catalog schema) or ``rest``."""
    name: str = Field(default="lakehouse", min_length=1, max_length=64)
    """Catalog name, as SQL engines sharing the catalog (Trino) must also call it."""
    uri: SecretStr | None = None
    """SQL: a SQLAlchemy URL (``postgresql+psycopg2://user:pw@host/db``); REST: the base URL.
    Empty for sql means a SQLite file ``catalog.db`` under ``data_dir``. Secret: may hold a
    password."""
    warehouse: str | None = None
    """Where new tables are stored: ``s3://bucket/prefix`` or ``file:///path``. Empty means the
    folder ``warehouse`` under ``data_dir``."""
    credential: SecretStr | None = None
    """REST catalog only: OAuth2 client credential (``client_id:client_secret``)."""
    token: SecretStr | None = None
    """REST catalog only: bearer token."""

    @model_validator(mode="after")
    def _rest_needs_uri(self) -> CatalogSettings:
        if self.type == "rest" and self.uri is None:
            raise ValueError("catalog.uri is required when catalog.type is rest")
        return self


class S3Settings(_Section):
    """The S3-compatible object store (MinIO, AWS S3, Ceph, ...)."""

    endpoint_url: str | None = None
    """Endpoint URL such as ``http://minio:9000``; empty means AWS's default endpoints."""
    region: str = "us-east-1"
    """Region name sent with signed requests."""
    access_key_id: SecretStr | None = None
    """Access key id; empty means the default AWS credential chain."""
    secret_access_key: SecretStr | None = None
    """Secret access key; empty means the default AWS credential chain."""
    path_style: bool | None = None
    """Path-style addressing (``endpoint/bucket/key``). Empty means on when endpoint_url is set
    (MinIO and most S3-compatible stores need it), off for AWS."""
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout for opening a connection to the object store."""

    @property
    def use_path_style(self) -> bool:
        """Whether requests use path-style addressing."""
        return self.path_style if self.path_style is not None else self.endpoint_url is not None


class IngestSettings(_Section):
    """Group commit, buffers and exactly-once bookkeeping of IngestService."""

    commit_delay_ms: float = Field(default=100.0, ge=0, le=60_000)
    """How long a table's committer waits for more writes before committing what it has."""
    commit_rows: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Commit as soon as this many rows are buffered for a table."""
    commit_bytes: int = Field(default=128 * 1024 * 1024, ge=1024, le=16 * 1024**3)
    """Commit as soon as this many bytes (Arrow) are buffered for a table."""
    table_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024**3)
    """Most bytes buffered for one table; writers beyond it wait, then get RESOURCE_EXHAUSTED."""
    buffer_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024, le=256 * 1024**3)
    """Most bytes buffered for all tables of the process together."""
    buffer_wait_seconds: float = Field(default=10.0, ge=0, le=600)
    """How long a write may wait for buffer space before RESOURCE_EXHAUSTED."""
    commit_attempts: int = Field(default=10, ge=1, le=100)
    """Commit attempts on conflicting commits (each re-checks offsets on fresh metadata)."""
    request_id_window_seconds: float = Field(default=3600.0, ge=1, le=7 * 24 * 3600)
    """How long a WriteRows request_id is remembered (it is kept in the table's snapshots)."""


class JobsSettings(_Section):
    """JobService: the job store, the workers that run jobs, and the maintenance scheduler."""

    database_uri: SecretStr | None = None
    """SQLAlchemy URL of the database that stores jobs. Empty means the catalog's own database
    (required with a REST catalog)."""
    workers: int = Field(default=2, ge=0, le=64)
    """Jobs the server process runs at once. 0 leaves all jobs to ``lakehouse worker``
    processes."""
    lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    """How long a worker holds a job without a heartbeat; after it, another worker takes over."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts of a job whose failure is retryable (a dead worker, an unavailable backend)."""
    retry_backoff_seconds: float = Field(default=5.0, ge=0, le=3600)
    """Delay before the second attempt; it doubles for each further one (with jitter)."""
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often an idle worker looks for queued jobs, and WatchJob for changes by other
    processes."""
    import_prefixes: tuple[str, ...] = ()
    """URI prefixes that import_files may read (``s3://landing/``, ``file:///srv/drop/``);
    empty allows no import."""
    scheduler_interval_seconds: float = Field(default=60.0, ge=0, le=86400)
    """How often table maintenance policies are checked and their jobs enqueued; 0 turns the
    scheduler off."""
    retention_days: float = Field(default=30.0, ge=0, le=3650)
    """Finished jobs are deleted this long after they ended (by the scheduler); 0 keeps them."""
    duckdb_memory_limit_mb: int = Field(default=1024, ge=64, le=1024 * 1024)
    """Memory limit of one DuckDB SQL job; larger intermediate results spill to temp files."""
    duckdb_threads: int = Field(default=2, ge=1, le=256)
    """Threads of one DuckDB SQL job."""


class TrinoSettings(_Section):
    """The Trino cluster that runs SQL jobs with engine TRINO.

    Its Iceberg connector must use the same catalog as the service.
    """

    endpoint: str | None = None
    """Trino coordinator URL (``http://trino:8080``); empty means the Trino engine is off."""
    catalog: str = "iceberg"
    """The Trino catalog that maps to the lakehouse's Iceberg catalog."""
    user: str = "lakehouse"
    """The Trino user queries run as."""
    password: SecretStr | None = None
    """Password for Trino's basic authentication (needs an https endpoint)."""
    access_token: SecretStr | None = None
    """Bearer token (JWT) for Trino's authentication, instead of a password."""
    ca_file: Path | None = None
    """CA bundle to verify an https endpoint with; empty means the system's."""
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Timeout of one HTTP request to Trino (a query spans many)."""


class TracingSettings(_Section):
    """OpenTelemetry tracing. Spans are always created; they are exported only if configured."""

    otlp_endpoint: str | None = None
    """OTLP gRPC collector endpoint (``http://otel-collector:4317``); empty exports nothing."""
    service_name: str = "lakehouse"
    """The ``service.name`` resource attribute."""


class Settings(BaseSettings):
    """Everything the service can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    grpc_host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port (all services, health, reflection). 0 picks a free one."""
    http_host: str = "0.0.0.0"
    """Address the sidecar HTTP server (/metrics, /healthz, /readyz) binds to."""
    http_port: int = Field(default=9180, ge=0, le=65535)
    """Sidecar HTTP port. 9180 clashes with neither Trino (8080) nor Prometheus (9090)."""
    data_dir: Path = Path("lakehouse-data")
    """Local folder for the embedded default (SQLite catalog, warehouse)."""
    catalog: CatalogSettings = CatalogSettings()
    """The Iceberg catalog."""
    s3: S3Settings = S3Settings()
    """The S3-compatible object store used by s3:// warehouses."""
    tracing: TracingSettings = TracingSettings()
    """OpenTelemetry tracing."""
    ingest: IngestSettings = IngestSettings()
    """Group commit and buffers of IngestService."""
    jobs: JobsSettings = JobsSettings()
    """JobService: job store, workers, maintenance scheduler."""
    trino: TrinoSettings = TrinoSettings()
    """Trino, for SQL jobs with engine TRINO."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of the JSON log lines on stdout."""
    health_check_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    """How often the catalog and the object store are checked for health and readiness."""
    health_check_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    """How long one dependency check may take before it counts as failed."""
    shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=3600)
    """On SIGTERM, how long in-flight calls may run before they are cancelled."""
    shutdown_drain_seconds: float = Field(default=1.0, ge=0, le=600)
    """On SIGTERM, how long health reports NOT_SERVING before the server stops accepting calls,
    so load balancers move traffic away first."""
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, le=1024 * 1024 * 1024)
    """Largest gRPC message received or sent. Above gRPC's 4 MiB default on purpose: a
    64k-row, 10-column Arrow batch is about 7 MB."""
    blocking_threads: int = Field(default=8, ge=1, le=256)
    """Threads for blocking catalog and file work (pyiceberg, pyarrow)."""
    table_cache_size: int = Field(default=1000, ge=1, le=1_000_000)
    """Loaded tables kept per process; each use revalidates by metadata location."""
    read_message_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    """Target size of one ReadRows message. Below gRPC's 4 MiB default receive limit, so
    clients need no channel options."""

    @model_validator(mode="after")
    def _jobs_need_a_database(self) -> Settings:
        if self.catalog.type == "rest" and self.jobs.database_uri is None:
            raise ValueError(
                "jobs.database_uri is required when catalog.type is rest "
                "(jobs live in a SQL database)"
            )
        return self

    @property
    def catalog_uri(self) -> str:
        """The effective catalog URI (the embedded SQLite file when none is configured)."""
        if self.catalog.uri is not None:
            return self.catalog.uri.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    @property
    def jobs_database_uri(self) -> str:
        """The effective job store URL (the catalog's SQL database when none is configured)."""
        if self.jobs.database_uri is not None:
            return self.jobs.database_uri.get_secret_value()
        return self.catalog_uri

    @property
    def warehouse(self) -> str:
        """The effective warehouse location (a local folder when none is configured)."""
        if self.catalog.warehouse:
            return self.catalog.warehouse
        return (self.data_dir / "warehouse").resolve().as_uri()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then ``_FILE`` secrets, then the config file."""
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _WithoutFileKeys(settings_cls, env_settings),
            _FileSecretsSource(settings_cls),
        ]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(_config_file_source(settings_cls, Path(config_file)))
        return tuple(sources)


class _WithoutFileKeys(PydanticBaseSettingsSource):
    """The environment source minus ``..._FILE`` variables (those name files, not values)."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _drop_file_keys(self._inner())


def _drop_file_keys(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_file_keys(v) if isinstance(v, dict) else v
        for k, v in values.items()
        if not k.endswith(FILE_SUFFIX.lower())
    }


def _unknown_env_names() -> list[str]:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    unknown = []
    for key in os.environ:
        if not key.startswith(ENV_PREFIX) or key == CONFIG_FILE_ENV:
            continue
        top = key.removesuffix(FILE_SUFFIX).split("__")[0]
        if top not in known:
            unknown.append(key)
    return sorted(unknown)


class _FileSecretsSource(PydanticBaseSettingsSource):
    """Reads ``LAKEHOUSE_X__Y_FILE=/path`` as the value of ``x.y`` (Docker/Kubernetes secrets)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, path in os.environ.items():
            if not (key.startswith(ENV_PREFIX) and key.endswith(FILE_SUFFIX)):
                continue
            if key == CONFIG_FILE_ENV:
                continue
            dotted = key[len(ENV_PREFIX) : -len(FILE_SUFFIX)].lower().split("__")
            try:
                secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
            target = values
            for part in dotted[:-1]:
                target = target.setdefault(part, {})
            target[dotted[-1]] = secret
        return values


def _config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    if path.suffix in {".yaml", ".yml", ".json"}:
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    raise ConfigError(f"config file {path}: use .yaml, .yml, .json or .toml")


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Reads the configuration from all sources.

    Args:
        overrides: Values from command-line flags, as nested dicts; they win over everything.

    Returns:
        The frozen settings.

    Raises:
        ConfigError: The configuration is invalid; the message is a single line.
    """
    unknown = _unknown_env_names()
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]} (see `lakehouse config` for the names)")
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc
    except ValueError as exc:  # a malformed config file or env value outside pydantic's model
        raise ConfigError(str(exc).splitlines()[0]) from exc


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, secrets replaced by ``**********``."""
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    data["effective"] = {"catalog_uri": _mask_url(settings), "warehouse": settings.warehouse}
    return data


def _mask_url(settings: Settings) -> str:
    if settings.catalog.uri is None:
        return settings.catalog_uri
    return "**********"
