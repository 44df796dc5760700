"""The service configuration: one frozen pydantic-settings model, read once at start-up.

Sources, highest priority first: command-line flags, ``LAKEHOUSE_*`` environment variables
(``__`` separates nested fields, e.g. ``LAKEHOUSE_S3__ENDPOINT_URL``), secrets read from
files (named by ``LAKEHOUSE_..._FILE`` variables, or systemd credentials in
``$CREDENTIALS_DIRECTORY``), an optional YAML/JSON/TOML config file, and the defaults below.
With no configuration at all the service runs on the embedded default: a SQLite catalog and a
warehouse folder under ``data_dir``.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from lakehouse.domain.names import IDENTIFIER_PATTERN

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ENV_PREFIX = "LAKEHOUSE_"
FILE_SUFFIX = "_FILE"
CONFIG_FILE_ENV = "LAKEHOUSE_CONFIG_FILE"
#: Set by systemd for a unit with ``LoadCredential=``/``SetCredential=``: a private folder
#: holding one file per credential.
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"


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
    """SQL: a SQLAlchemy URL (``postgresql+psycopg2://user@host:5432/db``); REST: the base URL.
    Empty for sql means a SQLite file ``catalog.db`` under ``data_dir``. Secret, as it may
    hold a password; without one (see ``password``) it can be plain configuration."""
    password: SecretStr | None = None
    """SQL catalog on a database server: the password, put into ``uri`` (URL-quoted, so any
    character is fine), which must then name a user and hold no password itself. Keeps the
    URI out of the secrets; the job store gets it too when it uses the catalog's database."""
    warehouse: str | None = None
    """Where new tables are stored: ``s3://bucket/prefix`` or ``file:///path``. Empty means the
    folder ``warehouse`` under ``data_dir``."""
    register_prefixes: tuple[str, ...] = ()
    """Locations besides the warehouse (``s3://bucket/tables/``, ``file:///srv/iceberg/``) under
    which RegisterTable accepts a table: its metadata file, location and every file it
    references must lie inside the warehouse or one of them. Empty allows the warehouse only.
    Purge still deletes only inside the warehouse."""
    credential: SecretStr | None = None
    """REST catalog only: OAuth2 client credential (``client_id:client_secret``)."""
    token: SecretStr | None = None
    """REST catalog only: bearer token."""

    @model_validator(mode="after")
    def _rest_needs_uri(self) -> CatalogSettings:
        if self.type == "rest" and self.uri is None:
            raise ValueError("catalog.uri is required when catalog.type is rest")
        return self

    @model_validator(mode="after")
    def _password_fits_the_uri(self) -> CatalogSettings:
        # Messages never quote the URI: it may hold a password.
        if self.password is None:
            return self
        if self.type != "sql":
            raise ValueError(
                "catalog.password is for a sql catalog; a rest catalog authenticates with "
                "catalog.credential or catalog.token"
            )
        if self.uri is None:
            raise ValueError(
                "catalog.password needs catalog.uri (the embedded SQLite catalog has none)"
            )
        url = _sql_url(self.uri)
        if url.get_backend_name() == "sqlite":
            raise ValueError("catalog.password needs a database server in catalog.uri, not SQLite")
        if url.password is not None:
            raise ValueError(
                "catalog.uri already holds a password and catalog.password is set too: keep one"
            )
        if not url.username:
            raise ValueError(
                "catalog.password needs a user name in catalog.uri "
                "(postgresql+psycopg2://USER@host:5432/db)"
            )
        return self

    @property
    def connection_uri(self) -> str | None:
        """``uri`` with ``password`` put in, or ``uri`` as configured (None when unset)."""
        if self.uri is None:
            return None
        if self.password is None:
            return self.uri.get_secret_value()
        url = _sql_url(self.uri).set(password=self.password.get_secret_value())
        return url.render_as_string(hide_password=False)


def _sql_url(uri: SecretStr) -> URL:
    """``uri`` parsed as a SQLAlchemy URL.

    Raises:
        ValueError: It is none (pydantic reports it as a configuration error).
    """
    # Imported here: most commands never parse a URL, and SQLAlchemy is slow to import.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri.get_secret_value())
    except ArgumentError:
        raise ValueError(
            "catalog.uri is not a SQLAlchemy URL (dialect+driver://user@host:port/database)"
        ) from None


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


#: What ``IngestSettings.handoff_retention_seconds`` must exceed the longest wait for an answer
#: by (a replica's answer read late: a pause, a slow database).
HANDOFF_RETENTION_MARGIN_SECONDS = 60.0


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
    max_request_rows: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Most rows of one WriteRows or AppendRows request; more is INVALID_ARGUMENT (reason
    TOO_MANY_ROWS). Read from the Arrow headers before anything is decoded: a null-type
    column claims any number of rows in a few bytes."""
    max_request_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024**3)
    """Most memory decoding one request may take: its decoded Arrow buffers (compressed ones at
    their decompressed length), a copy for casts, and a slot per row for each table column.
    Known from the Arrow headers before decoding, and charged to the write buffers while it
    decodes; more is INVALID_ARGUMENT (reason REQUEST_TOO_LARGE)."""
    commit_attempts: int = Field(default=30, ge=1, le=100)
    """Commit attempts on conflicting commits (each re-checks offsets on fresh metadata).

    Waits between attempts grow to 2 s, so 30 keep a committer trying through about a minute
    of contention: with two replicas writing one table, the one that loses a race waits while
    the other drains its burst (10 gave up after ~5 s, and a slower machine made that
    ABORTED). Conflicts are not failures: each attempt re-plans on the table as it is."""
    request_id_window_seconds: float = Field(default=3600.0, ge=1, le=7 * 24 * 3600)
    """How long a WriteRows request_id is remembered (it is kept in the table's snapshots)."""
    single_committer: bool = True
    """With a PostgreSQL job store (a database the replicas share), one replica at a time
    commits each table branch's writes, those of every replica, in one snapshot per window;
    the others write their Parquet files and hand them over. Off: each replica commits its
    own writes, and replicas writing one table conflict."""
    commit_lease_seconds: float = Field(default=10.0, ge=1, le=600)
    """How long a table's commit owner holds its lease without renewing it; after it (an owner
    that died), another replica takes the commits over. A draining owner gives it up at
    once."""
    handoff_poll_ms: float = Field(default=20.0, ge=1, le=10_000)
    """While the hand-off notifications cannot be received (their PostgreSQL connection is
    down): how often a replica looks for the owner's answer to the files it handed over, and
    an owner for files handed to it. While they are: how long an owner notified of handed
    files waits for more before claiming them (so that a burst shares one commit)."""
    handoff_safety_poll_ms: float = Field(default=1000.0, ge=10, le=60_000)
    """While the hand-off notifications are received (PostgreSQL LISTEN/NOTIFY wakes an owner
    when files are handed to it, and a replica when its files are committed): how often they
    look in the database anyway, in case a notification was lost."""
    handoff_notify: bool = True
    """Whether hand-offs send PostgreSQL notifications (NOTIFY) and each serving process
    listens for them. Off: no NOTIFY (which takes PostgreSQL's cluster-wide notification lock
    until each submit and resolve commits), no listening connection, and owners and replicas
    poll every ``handoff_poll_ms``."""
    handoff_timeout_seconds: float = Field(default=60.0, ge=1, le=3600)
    """How long handed files may wait for an owner to take them before the writes fail
    UNAVAILABLE (COMMIT_OWNER_UNAVAILABLE), nothing written."""
    handoff_retention_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)
    """How long the shared database keeps a handed batch's resolution that its replica did
    not read (it died), and the commit lease of a table branch released or expired (a table
    dropped or no longer written to). At least the longer of the hand-off timeout and the
    safety poll, plus a minute: a replica reads its answer within the timeout, and a replica
    that missed the notification reads it at the next safety poll."""

    @model_validator(mode="after")
    def _retention_outlives_the_handoff(self) -> IngestSettings:
        wait = max(self.handoff_timeout_seconds, self.handoff_safety_poll_ms / 1000)
        if self.handoff_retention_seconds < wait + HANDOFF_RETENTION_MARGIN_SECONDS:
            raise ValueError(
                "ingest.handoff_retention_seconds must be at least the longer of "
                "ingest.handoff_timeout_seconds and ingest.handoff_safety_poll_ms, plus "
                f"{HANDOFF_RETENTION_MARGIN_SECONDS:g} s (a replica may read its answer "
                "until then)"
            )
        return self


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
    """Delay before the second attempt; it doubles for each further one (with jitter), up to 1h."""
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often an idle worker looks for queued jobs, and WatchJob for changes by other
    processes."""
    import_prefixes: tuple[str, ...] = ()
    """URI prefixes that import_files may read (``s3://landing/``, ``file:///srv/drop/``);
    empty allows no import."""
    scheduler_interval_seconds: float = Field(default=60.0, ge=0, le=86400)
    """How often table maintenance policies are checked and their jobs enqueued; 0 turns the
    scheduler off."""
    ingest_keep_snapshots: int = Field(default=100, ge=0, le=1_000_000)
    """Snapshots kept of a table under ingest (its current snapshot, the head of main, was
    committed by WriteRows or AppendRows) that sets no ``history.expire.*`` property of its
    own: the scheduler expires the older ones, so that commits do not slow down as snapshots
    pile up. Between two scheduler passes a table may gain more (up to its commits per
    ``scheduler_interval_seconds``). 0 turns this default off."""
    retention_days: float = Field(default=30.0, ge=0, le=3650)
    """Finished jobs are deleted this long after they ended (by the scheduler); 0 keeps them."""
    duckdb_memory_limit_mb: int = Field(default=1024, ge=64, le=1024 * 1024)
    """Memory limit of one DuckDB SQL job; larger intermediate results spill to temp files."""
    duckdb_threads: int = Field(default=2, ge=1, le=256)
    """Threads of one DuckDB SQL job."""
    duckdb_temp_limit_mb: int = Field(default=10 * 1024, ge=16, le=16 * 1024 * 1024)
    """Spill space on disk of one DuckDB SQL job (its own folder under the data folder,
    removed when it ends); past it the job fails with JOB_TEMP_SPACE_EXHAUSTED."""
    timeout_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    """Wall-clock limit of one job attempt when its spec sets no ``timeout``; past it the job
    stops, commits nothing and fails with JOB_TIMEOUT (not retried)."""
    max_timeout_seconds: float = Field(default=86400.0, gt=0, le=7 * 86400)
    """The longest ``timeout`` a job spec may ask for; more is INVALID_ARGUMENT."""
    preview_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Size cap of a SQL job's stored result preview; rows past it are left out and
    ``preview_truncated`` is set, so that every response carrying the job stays small."""
    max_unfinished_per_principal: int = Field(default=500, ge=0, le=1_000_000)
    """Queued or running jobs one caller (principal) may have; CreateJob past it is
    RESOURCE_EXHAUSTED with reason JOB_QUOTA_EXCEEDED. 0 means no limit."""
    max_unfinished_per_namespace: int = Field(default=0, ge=0, le=1_000_000)
    """Queued or running jobs (of callers, not the scheduler) on one namespace's tables;
    CreateJob past it is RESOURCE_EXHAUSTED with reason JOB_QUOTA_EXCEEDED. 0 means no
    limit."""
    max_running_per_principal: int = Field(default=4, ge=0, le=10_000)
    """Jobs of one caller that run at once across all workers; its further jobs wait while
    other callers' jobs are claimed. 0 means no limit."""
    max_running_per_namespace: int = Field(default=0, ge=0, le=10_000)
    """Jobs on one namespace's tables that run at once across all workers; 0 means no
    limit."""

    @model_validator(mode="after")
    def _timeouts(self) -> JobsSettings:
        if self.timeout_seconds > self.max_timeout_seconds:
            raise ValueError("jobs.timeout_seconds must not be above jobs.max_timeout_seconds")
        return self


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


class ResilienceSettings(_Section):
    """Retries and circuit breakers around the backing services.

    The catalog, the object store, the job store and Trino each have a breaker. Only calls
    that change nothing (loads, lists, scans, validations) are retried by the service; writes
    and commits fail at once with UNAVAILABLE and are the client's to resend.
    """

    retry_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts of a read-only call whose backing service failed, the first one included;
    1 turns retries off. No retry starts that cannot end before the call's deadline."""
    retry_base_seconds: float = Field(default=0.1, gt=0, le=60)
    """Backoff before the first retry; it doubles for each further one. Each wait is drawn
    at random between 0 and that value (full jitter), so replicas do not retry in step."""
    retry_max_seconds: float = Field(default=2.0, gt=0, le=600)
    """Longest backoff between two attempts."""
    breaker_failure_threshold: int = Field(default=5, ge=0, le=1000)
    """Consecutive failures of a backing service after which its circuit breaker opens and
    calls to it fail at once with UNAVAILABLE; 0 turns the breakers off."""
    breaker_open_seconds: float = Field(default=10.0, gt=0, le=3600)
    """How long an open breaker fails calls before it lets one trial call through (a passing
    health check closes it sooner). Clients get the time left in ``RetryInfo``."""

    @model_validator(mode="after")
    def _backoff_range(self) -> ResilienceSettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError(
                "resilience.retry_max_seconds must not be below resilience.retry_base_seconds"
            )
        return self


class QuotaSettings(_Section):
    """Limits on what the catalog holds and on how fast one caller may call.

    The namespace and table limits count what the catalog stores, so they hold for all
    replicas together (two creates racing on different replicas for the last free slot may
    both pass). The rate limit is kept in each process: with N replicas a caller may make up
    to N times as many calls in all.
    """

    max_namespaces: int = Field(default=10_000, ge=0, le=10_000_000)
    """Namespaces the catalog may hold; CreateNamespace beyond it is RESOURCE_EXHAUSTED
    (reason ``NAMESPACE_QUOTA_EXCEEDED``). 0 means no limit."""
    max_tables_per_namespace: int = Field(default=10_000, ge=0, le=10_000_000)
    """Tables one namespace may hold; CreateTable, RegisterTable and RenameTable into a full
    namespace are RESOURCE_EXHAUSTED (reason ``TABLE_QUOTA_EXCEEDED``). 0 means no limit."""
    calls_per_second: float = Field(default=1000.0, ge=0, le=1_000_000)
    """Calls per second each authenticated principal (each client address when
    authentication is off) may make to one process, on average; beyond it calls are
    RESOURCE_EXHAUSTED (reason ``RATE_LIMITED``) with ``RetryInfo``. Health and reflection
    are exempt. 0 turns the rate limit off."""
    burst_calls: int = Field(default=2000, ge=1, le=10_000_000)
    """Calls a principal may make at once after being idle (the token bucket's size)."""


class ReadSessionSettings(_Section):
    """Read sessions (CreateReadSession): a read split into streams read in parallel.

    A session's name is signed with ``auth.signing_key`` and carries the whole read, so any
    replica holding the same key serves its streams; nothing is stored.
    """

    ttl_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    """How long a session's streams can be read; later, FAILED_PRECONDITION (reason
    ``READ_SESSION_EXPIRED``). A stream whose pinned snapshot maintenance expired meanwhile
    fails sooner (``SNAPSHOT_EXPIRED``): on a table under ingest with no snapshot policy of
    its own, only the newest ``jobs.ingest_keep_snapshots`` are kept."""
    max_streams: int = Field(default=16, ge=1, le=1000)
    """The most streams one session is split into, whatever the client asks."""


class TracingSettings(_Section):
    """OpenTelemetry tracing. Spans are always created; they are exported only if configured."""

    otlp_endpoint: str | None = None
    """OTLP gRPC collector endpoint (``http://otel-collector:4317``); empty exports nothing."""
    service_name: str = "lakehouse"
    """The ``service.name`` resource attribute."""


class TlsSettings(_Section):
    """TLS on the gRPC port (optionally mTLS) and on the sidecar HTTP port.

    Files are PEM. They are re-read on SIGHUP and when they change on disk, so a rotated
    certificate (cert-manager, Vault agent, certbot) is picked up without a restart; a bad new
    pair is refused and the previous one stays in use.
    """

    cert_file: Path | None = None
    """Certificate chain of the gRPC port (leaf first, then intermediates). Empty means the
    gRPC port is plaintext."""
    key_file: Path | None = None
    """Unencrypted private key of ``cert_file``; required with it."""
    client_ca_file: Path | None = None
    """CA bundle that client certificates must chain to (mTLS); needs
    ``require_client_cert``."""
    require_client_cert: bool = False
    """Refuse clients without a certificate from ``client_ca_file``. gRPC Python can only
    require client certificates or not ask for them (no "verify if presented"), hence both
    settings go together."""
    reload_interval_seconds: float = Field(default=60.0, ge=0, le=86400)
    """How often the files are checked for changes (modification time, size, inode); 0 reloads
    on SIGHUP only. Kubernetes updates mounted Secrets within about a minute."""
    http_cert_file: Path | None = None
    """Certificate chain of the sidecar HTTP port. Empty means the sidecar is plain HTTP."""
    http_key_file: Path | None = None
    """Unencrypted private key of ``http_cert_file``; required with it."""

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both or neither")
        if (self.http_cert_file is None) != (self.http_key_file is None):
            raise ValueError(
                "tls.http_cert_file and tls.http_key_file go together: set both or neither"
            )
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("tls.require_client_cert needs tls.client_ca_file")
        if self.client_ca_file is not None and not self.require_client_cert:
            # Accepting it would look like client certificates were checked while gRPC Python
            # does not even ask for them.
            raise ValueError(
                "tls.client_ca_file needs tls.require_client_cert=true (gRPC Python cannot "
                "verify client certificates without requiring them)"
            )
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self

    @property
    def grpc_enabled(self) -> bool:
        """Whether the gRPC port uses TLS."""
        return self.cert_file is not None

    @property
    def http_enabled(self) -> bool:
        """Whether the sidecar HTTP port uses TLS."""
        return self.http_cert_file is not None


#: The roles a caller can have, least privileged first (see ``lakehouse.server.permissions``).
RoleName = Literal["viewer", "developer", "admin"]
#: JWT signature algorithms the service can verify. ``none`` is not among them, on purpose.
JwtAlgorithm = Literal[
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
]
_HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: A namespace name as the service accepts it (``lakehouse.domain.names``), for grants.
NamespaceName = Annotated[str, Field(pattern=f"^{IDENTIFIER_PATTERN}$")]


class ApiKey(_Section):
    """One static API key: who it stands for and what it may do. Only its hash is kept."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$")
    """The principal the key authenticates, as it appears in the logs and the audit log."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the key, lower-case hex (``lakehouse api-key create`` prints it). The key
    itself is never stored: a leaked config file does not leak working keys."""
    role: RoleName
    """``viewer``, ``developer`` or ``admin``."""
    namespaces: tuple[NamespaceName, ...] | None = Field(default=None, min_length=1)
    """The namespaces the key may touch; absent means all of them."""


class AuthSettings(_Section):
    """Authentication (API keys, JWTs, mTLS client certificates) and role-based access.

    With mode ``auto``, authentication is on as soon as any credential is configured; with
    nothing configured the service runs open (every caller is admin) and says so loudly.
    """

    mode: Literal["auto", "required", "off"] = "auto"
    """``auto``: on when any credential is configured; ``required``: on, and a configuration
    without credentials is refused; ``off``: every caller is admin."""
    api_keys: tuple[ApiKey, ...] = ()
    """API keys as a JSON list of ``{name, sha256, role, namespaces?}`` (for the environment);
    added to those of ``api_keys_file``."""
    api_keys_file: Path | None = None
    """YAML or JSON file holding a list of ``{name, sha256, role, namespaces?}``; re-read when
    it changes and on SIGHUP (see ``reload_interval_seconds``)."""
    jwt_secret: SecretStr | None = None
    """Shared secret of HS256 JWTs; at least 32 bytes (RFC 7518)."""
    signing_key: SecretStr | None = None
    """Key (at least 32 bytes) that signs the service's short-lived, caller-bound tokens:
    read-session names and Arrow Flight tickets (HMAC-SHA256). Unset: with a PostgreSQL job
    store, a key generated once in that database and shared by every replica; otherwise a
    key generated once in ``data_dir`` (``signing.key``). Setting or changing it ends every
    live session and ticket (they fail with ``INVALID_READ_SESSION`` /
    ``FLIGHT_TICKET_INVALID``: clients create new ones)."""
    jwt_public_key_file: Path | None = None
    """PEM file with one or more public keys or certificates verifying RS256/ES256 JWTs."""
    jwt_jwks_file: Path | None = None
    """JWKS file (``{"keys": [...]}``) verifying RS256/ES256 JWTs; a token's ``kid`` picks the
    key."""
    jwt_algorithms: tuple[JwtAlgorithm, ...] = ()
    """Accepted JWT algorithms; empty means HS256 with a secret plus RS256 and ES256 with
    public keys. Tokens with any other ``alg`` (``none`` included) are refused."""
    jwt_issuer: str | None = None
    """Required ``iss`` of JWTs; empty means not checked."""
    jwt_audience: str | None = None
    """Required ``aud`` of JWTs; empty means tokens must carry no ``aud``."""
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=600)
    """Clock skew tolerated when checking ``exp`` and ``nbf``."""
    jwt_role_claim: str = Field(default="role", min_length=1)
    """JWT claim holding the role (a string, or a list whose most privileged known role
    counts); a dotted path such as ``realm_access.roles`` reaches into nested claims."""
    jwt_namespaces_claim: str | None = None
    """JWT claim holding the namespaces the caller may touch (a list, or a space- or
    comma-separated string); empty, or absent from a token, means all namespaces."""
    reload_interval_seconds: float = Field(default=60.0, ge=0, le=86400)
    """How often the key files (``api_keys_file``, ``jwt_public_key_file``,
    ``jwt_jwks_file``) are checked for changes; 0 re-reads them on SIGHUP only. A file that
    no longer parses is refused and the keys in use stay."""
    mtls_roles: dict[str, RoleName] = Field(default_factory=dict)
    """Role of each client certificate, keyed by a subject alternative name or common name
    (``{"etl.internal": "developer"}``); needs ``tls.require_client_cert``."""
    public_health: bool = True
    """``grpc.health.v1.Health`` answers without credentials (load balancers, probes)."""
    public_reflection: bool = True
    """Server reflection answers without credentials (``grpcurl list``/``describe``)."""
    public_metrics: bool = True
    """The sidecar's ``/metrics`` answers without credentials; when False (and authentication
    is on) a scrape needs ``authorization: Bearer`` with an API key or JWT of any role."""
    public_probes: bool = True
    """The sidecar's ``/healthz`` and ``/readyz`` answer without credentials (kubelet and load
    balancer probes send none); when False (and authentication is on) they need a bearer
    API key or JWT of any role."""

    @model_validator(mode="after")
    def _signing_key_is_long_enough(self) -> AuthSettings:
        if self.signing_key is not None:
            size = len(self.signing_key.get_secret_value().encode())
            if size < _HMAC_MIN_SECRET_BYTES["HS256"]:
                raise ValueError(
                    f"auth.signing_key must be at least "
                    f"{_HMAC_MIN_SECRET_BYTES['HS256']} bytes (it has {size})"
                )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> AuthSettings:
        if self.mode == "required" and not self.configured:
            raise ValueError(
                "auth.mode is required but no credential is configured (set auth.api_keys, "
                "auth.api_keys_file, auth.jwt_secret, auth.jwt_public_key_file, "
                "auth.jwt_jwks_file or auth.mtls_roles)"
            )
        for algorithm in self.effective_jwt_algorithms:
            if algorithm.startswith("HS"):
                if self.jwt_secret is None:
                    raise ValueError(f"auth.jwt_algorithms has {algorithm}: set auth.jwt_secret")
                size = len(self.jwt_secret.get_secret_value().encode())
                if size < _HMAC_MIN_SECRET_BYTES[algorithm]:
                    raise ValueError(
                        f"auth.jwt_secret must be at least {_HMAC_MIN_SECRET_BYTES[algorithm]} "
                        f"bytes for {algorithm} (it has {size})"
                    )
            elif self.jwt_public_key_file is None and self.jwt_jwks_file is None:
                raise ValueError(
                    f"auth.jwt_algorithms has {algorithm}: set auth.jwt_public_key_file or "
                    "auth.jwt_jwks_file"
                )
        names = [key.name for key in self.api_keys]
        hashes = [key.sha256 for key in self.api_keys]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError("auth.api_keys: every key needs its own name and its own sha256")
        return self

    @property
    def configured(self) -> bool:
        """Whether any credential source is configured."""
        return bool(
            self.api_keys
            or self.api_keys_file
            or self.jwt_secret
            or self.jwt_public_key_file
            or self.jwt_jwks_file
            or self.mtls_roles
        )

    @property
    def key_files(self) -> tuple[Path, ...]:
        """The files keys are read from (and re-read when they change)."""
        files = (self.api_keys_file, self.jwt_public_key_file, self.jwt_jwks_file)
        return tuple(path for path in files if path is not None)

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate (otherwise every caller is admin)."""
        return self.mode == "required" or (self.mode == "auto" and self.configured)

    @property
    def effective_jwt_algorithms(self) -> tuple[str, ...]:
        """The accepted JWT algorithms: the configured ones, or those the keys imply."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        implied: list[str] = []
        if self.jwt_secret is not None:
            implied.append("HS256")
        if self.jwt_public_key_file is not None or self.jwt_jwks_file is not None:
            implied += ["RS256", "ES256"]
        return tuple(implied)


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
    flight_host: str = "0.0.0.0"
    """Address the Arrow Flight data plane binds to (when ``flight_port`` is set)."""
    flight_port: int | None = Field(default=None, ge=0, le=65535)
    """Arrow Flight port (``do_get`` reads, ``do_put`` appends; docs/flight.md). Unset: no
    Flight server. 0 picks a free one."""
    flight_advertised_host: str = ""
    """Host put in the locations of FlightInfo endpoints (with the bound Flight port), for
    clients that must reach this replica by another name. Empty: no location, and clients
    redeem tickets on the connection that asked for them (any replica: tickets are signed
    with the shared ``auth.signing_key``)."""
    flight_ticket_ttl_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)
    """How long a Flight ticket from ``get_flight_info`` on a ``ReadRowsRequest`` may be
    redeemed with ``do_get`` (a read session's tickets last as long as the session)."""
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
    resilience: ResilienceSettings = ResilienceSettings()
    """Retries and circuit breakers around the backing services."""
    tls: TlsSettings = TlsSettings()
    """TLS and mTLS on the gRPC port, TLS on the sidecar HTTP port."""
    auth: AuthSettings = AuthSettings()
    """Who may call the gRPC services: API keys, JWTs, mTLS roles."""
    quotas: QuotaSettings = QuotaSettings()
    """Namespace and table quotas, and the per-caller rate limit."""
    read_sessions: ReadSessionSettings = ReadSessionSettings()
    """Read sessions: the signing secret, their lifetime, their most streams."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of the JSON log lines on stdout."""
    access_log_probes: bool = False
    """Write the access-log line (``"msg": "rpc"``) of successful health checks and reflection
    calls too. Off: load balancers and the kubelet probe every few seconds, and their lines
    would drown the others; failed probe calls are logged either way, and the
    ``grpc_server_*`` metrics count every call."""
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
    request_timeout_seconds: float = Field(default=60.0, gt=0, le=24 * 3600)
    """Longest a unary call may run when the client set no deadline or a longer one; it then
    ends with DEADLINE_EXCEEDED (reason SERVER_DEADLINE). gRPC calls have no deadline unless
    the client sets one, and a forgotten one must not hold server resources forever."""
    stream_timeout_seconds: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    """The same limit for streaming calls (ReadRows, AppendRows, WatchJob), which legitimately
    run much longer than unary ones."""
    max_concurrent_streams: int = Field(default=100, ge=1, le=100_000)
    """Calls one client connection may have open at once (HTTP/2 SETTINGS); a client's extra
    calls wait on its side, so one connection cannot take every handler."""
    max_concurrent_calls: int = Field(default=2000, ge=0, le=1_000_000)
    """Calls one process handles at once, all connections together (health and reflection
    aside; streams count while open); one more is RESOURCE_EXHAUSTED (SERVER_OVERLOADED) with
    a RetryInfo. The defence against overload now that gRPC core's own (which refused calls
    as UNAVAILABLE well below the stream limit) is off. 0: no bound."""
    max_connection_age_seconds: float = Field(default=1800.0, ge=0, le=30 * 24 * 3600)
    """After this long a connection is asked to go away (GOAWAY, with gRPC's 10 % jitter) and
    clients reconnect, so long-lived HTTP/2 connections spread over replicas added since
    (an L4 load balancer only balances new connections). Calls in flight may finish within
    ``stream_timeout_seconds``. 0 keeps connections forever."""
    blocking_threads: int = Field(default=8, ge=1, le=256)
    """Threads for blocking catalog and file work (pyiceberg, pyarrow)."""
    table_cache_size: int = Field(default=1000, ge=1, le=1_000_000)
    """Loaded tables kept per process; each use revalidates by metadata location."""
    max_watchers: int = Field(default=1000, ge=0, le=100_000)
    """WatchTable streams open at once in one process; one more is RESOURCE_EXHAUSTED
    (WATCHERS_EXHAUSTED). Each polls its table's metadata location about once a second when
    idle."""
    table_metrics_max_tables: int = Field(default=100, ge=0, le=10_000)
    """Tables with per-table gauges (``lakehouse_table_*``) at most, the most recently touched
    ones (a commit or a GetTableHealth); the others' series are removed. 0: none."""
    read_message_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    """Target size of one ReadRows message. Below gRPC's 4 MiB default receive limit, so
    clients need no channel options."""
    read_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024**3)
    """Most decoded bytes of ReadRows batches read ahead of all streams of the process together
    (counted decoded, whatever the files' compression). A stream with nothing read ahead may
    still read one batch, so each stream also holds about one batch, a decoded piece of about
    2 MiB and the messages in flight; a stream without budget waits (its client is slow)."""
    read_stream_buffer_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024**3)
    """Most decoded bytes one ReadRows stream reads ahead of what its client has taken."""

    @model_validator(mode="after")
    def _jobs_need_a_database(self) -> Settings:
        if self.catalog.type == "rest" and self.jobs.database_uri is None:
            raise ValueError(
                "jobs.database_uri is required when catalog.type is rest "
                "(jobs live in a SQL database)"
            )
        return self

    @model_validator(mode="after")
    def _mtls_roles_need_client_certs(self) -> Settings:
        if self.auth.mtls_roles and not self.tls.require_client_cert:
            raise ValueError(
                "auth.mtls_roles needs tls.require_client_cert (without it, clients present "
                "no certificate to map)"
            )
        return self

    @property
    def catalog_uri(self) -> str:
        """The effective catalog URI (the embedded SQLite file when none is configured)."""
        uri = self.catalog.connection_uri
        if uri is not None:
            return uri
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
        return _drop_file_keys(self._inner(), self.settings_cls)


def _drop_file_keys(values: dict[str, Any], model: type[BaseModel] | None) -> dict[str, Any]:
    """``values`` minus ``..._file`` keys, except settings named so themselves.

    ``tls.cert_file`` is a path to use, not a file holding the value of ``tls.cert``.
    """
    kept: dict[str, Any] = {}
    for key, value in values.items():
        field = model.model_fields.get(key) if model is not None else None
        if field is None and key.endswith(FILE_SUFFIX.lower()):
            continue
        kept[key] = _drop_file_keys(value, _section(field)) if isinstance(value, dict) else value
    return kept


def _section(field: Any) -> type[BaseModel] | None:
    """The nested model of a settings field (``Settings.tls``), None for a plain value."""
    annotation = getattr(field, "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_setting(dotted: list[str]) -> bool:
    """Whether a dotted name such as ``["tls", "cert_file"]`` is a setting of its own."""
    model: type[BaseModel] | None = Settings
    for part in dotted[:-1]:
        model = _section(model.model_fields.get(part)) if model is not None else None
    return model is not None and dotted[-1] in model.model_fields


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
    """Secrets read from files, one value per file, a trailing newline dropped.

    Two spellings, one level of precedence:

    - ``LAKEHOUSE_X__Y_FILE=/path`` is the value of ``x.y`` (Docker and Kubernetes secrets);
    - systemd credentials: a file named ``x.y`` in ``$CREDENTIALS_DIRECTORY`` (the unit's
      ``LoadCredential=x.y:/etc/lakehouse/credentials/x.y``) is the value of the secret
      setting ``x.y``; for a file setting (``tls.key_file``) its path is the value, since
      the credential copy is the one file a ``DynamicUser=`` service can read.

    Naming one setting both ways is refused: which file wins would be a guess.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[tuple[str, ...], tuple[str, str]] = {}  # setting -> (secret, its source)
        for key, path in os.environ.items():
            if not (key.startswith(ENV_PREFIX) and key.endswith(FILE_SUFFIX)):
                continue
            if key == CONFIG_FILE_ENV:
                continue
            if _is_setting(key[len(ENV_PREFIX) :].lower().split("__")):
                continue  # LAKEHOUSE_TLS__CERT_FILE: the setting tls.cert_file, not a secret
            dotted = tuple(key[len(ENV_PREFIX) : -len(FILE_SUFFIX)].lower().split("__"))
            found[dotted] = (_read_secret(Path(path), key), key)
        for name, credential, is_file_setting in _credential_files():
            dotted = tuple(name.split("."))
            if dotted in found:
                raise ConfigError(
                    f"{name} is set both by {found[dotted][1]} and by the systemd credential "
                    f"{name}; keep one"
                )
            value = (
                str(credential)
                if is_file_setting
                else _read_secret(credential, f"credential {name}")
            )
            found[dotted] = (value, f"credential {name}")
        values: dict[str, Any] = {}
        for dotted, (secret, _) in found.items():
            target = values
            for part in dotted[:-1]:
                target = target.setdefault(part, {})
            target[dotted[-1]] = secret
        return values


def _read_secret(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {path}: {exc.strerror}") from exc


def secret_setting_names() -> list[str]:
    """The secret settings' dotted names, such as ``s3.secret_access_key``.

    They are the names ``lakehouse config`` prints, and the systemd credential names whose
    content the service reads as the value.
    """
    return _setting_names(
        lambda name, annotation: annotation is SecretStr or SecretStr in typing.get_args(annotation)
    )


def file_setting_names() -> list[str]:
    """The dotted names of settings that name a file, such as ``tls.key_file``.

    A systemd credential with such a name sets the setting to the credential's path.
    """
    return _setting_names(
        lambda name, annotation: (
            name.endswith("_file") and (annotation is Path or Path in typing.get_args(annotation))
        )
    )


def _setting_names(matches: Callable[[str, Any], bool]) -> list[str]:
    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        names = []
        for name, field in model.model_fields.items():
            section = _section(field)
            if section is not None:
                names += walk(section, f"{prefix}{name}.")
            elif matches(name, field.annotation):
                names.append(f"{prefix}{name}")
        return names

    return sorted(walk(Settings, ""))


def _credential_files() -> list[tuple[str, Path, bool]]:
    """(name, file, whether a file setting) of every systemd credential.

    An unknown name is refused rather than skipped: a misspelt credential would otherwise
    leave its setting at the default without a word (an S3 key missing, the embedded SQLite
    catalog in place of PostgreSQL). systemd puts only the unit's own ``LoadCredential=``
    entries in the folder, so everything there was meant for the service.
    """
    directory = os.environ.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        return []
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError as exc:
        raise ConfigError(
            f"{CREDENTIALS_DIRECTORY_ENV}: cannot read {directory}: {exc.strerror}"
        ) from exc
    secrets, files = set(secret_setting_names()), set(file_setting_names())
    credentials = []
    for entry in entries:
        if entry.name not in secrets | files:
            close = difflib.get_close_matches(entry.name, sorted(secrets | files), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown credential {entry.name!r} in ${CREDENTIALS_DIRECTORY_ENV}{hint}: "
                "credentials are named after a secret setting (content is the value) or a "
                "*_file setting (path is the value), as `lakehouse config` names them"
            )
        credentials.append((entry.name, entry, entry.name in files))
    return credentials


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
