"""The Trino engine adapter against a fake coordinator speaking Trino's client protocol.

No Trino can run here; ``fixtures.fake_trino`` answers on 127.0.0.1 the way a coordinator
does on the wire (paging through nextUri, DELETE to cancel, QueryError documents), and the
adapter talks to it through the real ``trino`` client.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pyarrow as pa
import pytest

from fixtures.fake_trino import (
    INTERNAL_ERROR,
    SYNTAX_ERROR,
    TABLE_NOT_FOUND,
    Failure,
    FakeTrino,
    Rows,
    Slow,
    Update,
    self_signed_certificate,
    server_ssl_context,
)
from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.trino.engine import TrinoEngine
from lakehouse.adapters.trino.results import TrinoType, parse_trino_type
from lakehouse.config import TrinoSettings
from lakehouse.domain.errors import (
    AlreadyExists,
    CommitStateUnknown,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.json_values import batch_to_structs
from lakehouse.domain.sql_result import SqlOutcome

PASSWORD = "s3cret-pw"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.e30.fake-signature"


@pytest.fixture
def fake() -> Iterator[FakeTrino]:
    with FakeTrino() as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


@pytest.fixture
def tls_fake(tls: tuple[Path, Path]) -> Iterator[FakeTrino]:
    with FakeTrino(ssl_context=server_ssl_context(*tls)) as server:
        yield server


def engine_for(endpoint: str, **overrides: Any) -> TrinoEngine:
    values: dict[str, Any] = {
        "endpoint": endpoint,
        "catalog": "iceberg",
        "user": "alice",
        "request_timeout_seconds": 5,
    }
    values.update(overrides)
    return TrinoEngine(TrinoSettings(**values))


def run(
    engine: TrinoEngine,
    statement: str,
    *,
    ctx: JobContext | None = None,
    namespace: str = "sales",
    preview_limit: int = 100,
    destination: tuple[str, str] | None = None,
) -> SqlOutcome:
    return engine.run_statement(
        statement=statement,
        default_namespace=namespace,
        preview_limit=preview_limit,
        destination=destination,
        ctx=ctx or JobContext(job_id="job-1"),
    )


def assert_deleted(fake: FakeTrino, query_ids: list[str], timeout: float = 5.0) -> None:
    """The fake received DELETE for exactly these queries (a job's stop callbacks, which send
    the cancel, run in a thread of their own, so it may arrive just after the call returns)."""
    deadline = time.monotonic() + timeout
    while fake.deleted != query_ids and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.deleted == query_ids


# -- Queries -------------------------------------------------------------------------------


def test_query_pages_are_all_counted_and_the_preview_truncated(fake: FakeTrino) -> None:
    rows = [[i, f"name-{i}"] for i in range(25)]
    fake.script("SELECT id, name FROM orders", Rows([("id", "bigint"), ("name", "varchar")], rows))
    ctx = JobContext(job_id="job-1")

    outcome = run(engine_for(fake.url), "SELECT id, name FROM orders;", ctx=ctx, preview_limit=10)

    assert outcome.rows_affected == 25
    assert outcome.truncated is True
    assert outcome.preview.num_rows == 10
    assert outcome.preview.column("id").to_pylist() == list(range(10))
    assert outcome.preview.schema == pa.schema([("id", pa.int64()), ("name", pa.string())])
    (statement,) = fake.statements
    assert statement.sql == "SELECT id, name FROM orders"  # no trailing semicolon
    # 25 rows in pages of 3: the client walked 9 data pages plus the queued/running/final ones.
    assert fake.gets(statement.query_id) >= 11
    progress = ctx.take_progress()
    assert progress is not None
    assert progress[0] == 1.0
    assert "9/9 splits" in progress[1]


def test_a_result_within_the_limit_is_not_truncated(fake: FakeTrino) -> None:
    fake.script("SELECT 1", Rows([("_col0", "integer")], [[1]]))

    outcome = run(engine_for(fake.url), "SELECT 1")

    assert (outcome.rows_affected, outcome.truncated, outcome.preview.num_rows) == (1, False, 1)


def test_an_empty_result_keeps_its_schema(fake: FakeTrino) -> None:
    fake.script("SELECT x FROM t WHERE false", Rows([("x", "double")], []))

    outcome = run(engine_for(fake.url), "SELECT x FROM t WHERE false", preview_limit=0)

    assert outcome.rows_affected == 0
    assert outcome.truncated is False
    assert outcome.preview.schema == pa.schema([("x", pa.float64())])


def test_a_zero_preview_limit_counts_without_keeping(fake: FakeTrino) -> None:
    fake.script("SELECT x FROM t", Rows([("x", "bigint")], [[i] for i in range(7)]))

    outcome = run(engine_for(fake.url), "SELECT x FROM t", preview_limit=0)

    assert (outcome.rows_affected, outcome.truncated, outcome.preview.num_rows) == (7, True, 0)


TYPED_COLUMNS: list[tuple[str, str, pa.DataType, Any, Any]] = [
    # name, Trino type, Arrow type, value on the wire, value in the preview
    ("b", "boolean", pa.bool_(), True, True),
    ("ti", "tinyint", pa.int8(), 1, 1),
    ("si", "smallint", pa.int16(), 2, 2),
    ("i", "integer", pa.int32(), 3, 3),
    ("big", "bigint", pa.int64(), 2**40, 2**40),
    ("r", "real", pa.float32(), 1.5, 1.5),
    ("d", "double", pa.float64(), 2.25, 2.25),
    ("dec", "decimal(10, 2)", pa.decimal128(10, 2), "12.34", decimal.Decimal("12.34")),
    ("vc", "varchar", pa.string(), "hello", "hello"),
    ("vc5", "varchar(5)", pa.string(), "abc", "abc"),
    ("c", "char(3)", pa.string(), "ab ", "ab "),
    ("vb", "varbinary", pa.binary(), base64.b64encode(b"\x00\x01").decode(), b"\x00\x01"),
    ("j", "json", pa.string(), '{"a":1}', '{"a":1}'),
    ("day", "date", pa.date32(), "2024-05-01", dt.date(2024, 5, 1)),
    (
        "ts",
        "timestamp(6)",
        pa.timestamp("us"),
        "2024-05-01 12:34:56.123456",
        dt.datetime(2024, 5, 1, 12, 34, 56, 123456),
    ),
    (
        "ts3",
        "timestamp(3)",
        pa.timestamp("ms"),
        "2024-05-01 12:34:56.123",
        dt.datetime(2024, 5, 1, 12, 34, 56, 123000),
    ),
    (
        "tstz",
        "timestamp(3) with time zone",
        pa.timestamp("ms", tz="UTC"),
        "2024-05-01 12:34:56.123 +02:00",
        dt.datetime(2024, 5, 1, 10, 34, 56, 123000, tzinfo=dt.UTC),
    ),
    ("tm", "time(3)", pa.time32("ms"), "12:34:56.789", dt.time(12, 34, 56, 789000)),
    ("arr", "array(bigint)", pa.list_(pa.int64()), [1, 2, None], [1, 2, None]),
    ("m", "map(varchar, bigint)", pa.map_(pa.string(), pa.int64()), {"a": 1}, [("a", 1)]),
    (
        "rw",
        'row(x bigint, "y z" varchar)',
        pa.struct([("x", pa.int64()), ("y z", pa.string())]),
        [1, "q"],
        {"x": 1, "y z": "q"},
    ),
    (
        "u",
        "uuid",
        pa.string(),
        "12151fd2-7586-11e9-8f9e-2a86e4085a59",
        "12151fd2-7586-11e9-8f9e-2a86e4085a59",
    ),
    ("ip", "ipaddress", pa.string(), "10.0.0.1", "10.0.0.1"),
]


def test_the_preview_has_the_arrow_types_of_trino_columns(fake: FakeTrino) -> None:
    columns = [(name, trino_type) for name, trino_type, *_ in TYPED_COLUMNS]
    wire = [value for *_, value, _ in TYPED_COLUMNS]
    fake.script("SELECT * FROM everything", Rows(columns, [wire, [None] * len(wire)]))

    outcome = run(engine_for(fake.url), "SELECT * FROM everything")

    expected = pa.schema([(name, arrow) for name, _, arrow, _, _ in TYPED_COLUMNS])
    assert outcome.preview.schema == expected
    first, second = outcome.preview.to_pylist(maps_as_pydicts=None)
    assert first == {name: value for name, *_, value in TYPED_COLUMNS}
    assert all(v is None for v in second.values())
    # The JSON preview format renders every one of these types.
    assert len(batch_to_structs(outcome.preview.to_batches()[0])) == 2


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("bigint", TrinoType("bigint")),
        ("decimal(38, 0)", TrinoType("decimal", (38, 0))),
        ("timestamp(3) with time zone", TrinoType("timestamp with time zone", (3,))),
        ("interval day to second", TrinoType("interval day to second")),
        (
            'row(a bigint, "b c" array(varchar(3)), interval day to second)',
            TrinoType(
                "row",
                fields=(
                    ("a", TrinoType("bigint")),
                    ("b c", TrinoType("array", fields=((None, TrinoType("varchar", (3,))),))),
                    (None, TrinoType("interval day to second")),
                ),
            ),
        ),
        (
            "map(varchar, row(bigint, double))",
            TrinoType(
                "map",
                fields=(
                    (None, TrinoType("varchar")),
                    (
                        None,
                        TrinoType(
                            "row", fields=((None, TrinoType("bigint")), (None, TrinoType("double")))
                        ),
                    ),
                ),
            ),
        ),
    ],
)
def test_trino_type_notation_is_parsed(text: str, parsed: TrinoType) -> None:
    assert parse_trino_type(text) == parsed


@pytest.mark.parametrize("text", ["", "array(", "decimal(10,", "row(a bigint))", "varchar$"])
def test_malformed_type_notation_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_trino_type(text)


def test_an_unparseable_column_type_is_previewed_as_text(fake: FakeTrino) -> None:
    fake.script("SELECT odd", Rows([("odd", "qdigest(bigint)")], [["AAEC"]]))

    outcome = run(engine_for(fake.url), "SELECT odd")

    assert outcome.preview.schema == pa.schema([("odd", pa.string())])
    assert outcome.preview.column("odd").to_pylist() == ["AAEC"]


# -- Session -------------------------------------------------------------------------------


def test_the_session_names_user_catalog_schema_source_and_job(fake: FakeTrino) -> None:
    fake.script("SELECT 1", Rows([("_col0", "integer")], [[1]]))

    run(engine_for(fake.url), "SELECT 1", ctx=JobContext(job_id="job-42", attempt=3))

    (statement,) = fake.statements
    headers = statement.headers
    assert headers["x-trino-user"] == "alice"
    assert headers["x-trino-catalog"] == "iceberg"
    assert headers["x-trino-schema"] == "sales"
    assert headers["x-trino-source"] == "lakehouse"
    assert headers["x-trino-time-zone"] == "UTC"
    assert set(headers["x-trino-client-tags"].split(",")) == {"lakehouse", "lakehouse-job:job-42"}
    assert '"job_id": "job-42"' in headers["x-trino-client-info"]
    assert '"attempt": 3' in headers["x-trino-client-info"]
    assert "authorization" not in headers


def test_without_a_default_namespace_no_schema_is_sent(fake: FakeTrino) -> None:
    fake.script("SELECT 1", Rows([("_col0", "integer")], [[1]]))

    run(engine_for(fake.url), "SELECT 1", namespace="")

    assert "x-trino-schema" not in fake.statements[0].headers


@pytest.mark.parametrize(
    ("credential", "authorization"),
    [
        (
            {"password": PASSWORD},
            "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
        ),
        ({"access_token": TOKEN}, f"Bearer {TOKEN}"),
    ],
    ids=["basic", "jwt"],
)
def test_credentials_go_over_verified_https(
    tls_fake: FakeTrino,
    tls: tuple[Path, Path],
    credential: dict[str, str],
    authorization: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests would let this variable replace the session's CA bundle: ca_file must win.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    tls_fake.script("SELECT 1", Rows([("_col0", "integer")], [[1]]))
    engine = engine_for(tls_fake.url, ca_file=tls[0], **credential)

    run(engine, "SELECT 1")
    engine.check()

    (statement,) = tls_fake.statements
    assert statement.headers["authorization"] == authorization
    # Every page of the query is fetched with the credentials too.
    gets = [r for r in tls_fake.requests if r.method == "GET" and "/v1/statement/" in r.path]
    assert gets
    assert all(r.headers.get("authorization") == authorization for r in gets)


def test_https_with_an_unknown_ca_is_unavailable(tls_fake: FakeTrino) -> None:
    engine = engine_for(tls_fake.url, access_token=TOKEN)  # system CAs: the fake's is unknown

    with pytest.raises(Unavailable) as caught:
        run(engine, "SELECT 1")

    assert TOKEN not in str(caught.value)
    assert tls_fake.statements == []


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"endpoint": None}, "not set"),
        ({"endpoint": "trino:8080"}, "http:// or https://"),
        ({"endpoint": "http://trino:8080/presto"}, "path"),
        ({"endpoint": "https://bob:pw@trino:8443"}, "credentials"),
        ({"endpoint": "http://trino:8080", "password": PASSWORD}, "https"),
        ({"endpoint": "http://trino:8080", "access_token": TOKEN}, "https"),
        ({"endpoint": "https://trino", "password": PASSWORD, "access_token": TOKEN}, "not both"),
    ],
)
def test_settings_that_cannot_work_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TrinoEngine(TrinoSettings(**overrides))


# -- Validation (CreateJob) ----------------------------------------------------------------


def test_a_valid_statement_passes_explain_validate(fake: FakeTrino) -> None:
    fake.script("SELECT * FROM orders", Rows([("id", "bigint")], [[1]]))

    engine_for(fake.url).check_statement("SELECT * FROM orders ; ", default_namespace="sales")

    (statement,) = fake.statements
    assert statement.sql == "EXPLAIN (TYPE VALIDATE) SELECT * FROM orders"
    assert statement.headers["x-trino-schema"] == "sales"
    assert "lakehouse-validate" in statement.headers["x-trino-client-tags"]


def test_a_syntax_error_is_invalid_argument_with_trinos_message(fake: FakeTrino) -> None:
    fake.script("SELEC 1", SYNTAX_ERROR)

    with pytest.raises(InvalidArgument) as caught:
        engine_for(fake.url).check_statement("SELEC 1")

    (violation,) = caught.value.violations
    assert violation.field == "sql.statement"
    assert SYNTAX_ERROR.message in violation.description
    assert "SYNTAX_ERROR" in violation.description
    assert caught.value.metadata["trino_error_name"] == "SYNTAX_ERROR"


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (TABLE_NOT_FOUND, "TABLE_NOT_FOUND"),
        (
            Failure("line 1:15: Schema 'nope' does not exist", "SCHEMA_NOT_FOUND", 45),
            "NAMESPACE_NOT_FOUND",
        ),
    ],
)
def test_an_unknown_table_or_namespace_is_not_found(
    fake: FakeTrino, failure: Failure, reason: str
) -> None:
    fake.script("SELECT * FROM nope", failure)

    with pytest.raises(NotFound) as caught:
        engine_for(fake.url).check_statement("SELECT * FROM nope")

    assert caught.value.reason == reason
    assert failure.message in caught.value.message


# -- Data-changing statements --------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "update_type"),
    [
        ("INSERT INTO orders VALUES (1), (2), (3)", "INSERT"),
        ("UPDATE orders SET qty = 0 WHERE id < 4", "UPDATE"),
        ("DELETE FROM orders WHERE id < 4", "DELETE"),
        ("MERGE INTO orders o USING new n ON o.id = n.id WHEN MATCHED THEN DELETE", "MERGE"),
    ],
)
def test_a_data_changing_statement_reports_trinos_update_count(
    fake: FakeTrino, statement: str, update_type: str
) -> None:
    fake.script(statement, Update(update_type, 3))

    outcome = run(engine_for(fake.url), statement)

    assert outcome.rows_affected == 3
    assert outcome.truncated is False
    assert (outcome.preview.num_rows, outcome.preview.num_columns) == (0, 0)


def test_a_destination_runs_create_table_as_with_quoted_names(fake: FakeTrino) -> None:
    fake.script(re.compile(r"^CREATE TABLE "), Update("CREATE TABLE", 42))
    engine = engine_for(fake.url, catalog='ice"berg')

    outcome = run(
        engine,
        "SELECT * FROM orders -- all of them;",
        destination=("reports", "daily orders"),
    )

    (statement,) = fake.statements
    assert statement.sql == (
        'CREATE TABLE "ice""berg"."reports"."daily orders" AS (\n'
        "SELECT * FROM orders -- all of them\n"
        ")"
    )
    assert outcome.rows_affected == 42
    assert (outcome.preview.num_rows, outcome.preview.num_columns) == (0, 0)


def test_a_write_trino_finished_is_reported_even_if_the_stop_came_too_late(
    fake: FakeTrino,
) -> None:
    class StopWhenFinished(JobContext):
        def progress(self, fraction: float, message: str) -> None:
            super().progress(fraction, message)
            if "FINISHED" in message:
                self.stop("cancelled")  # Trino has committed: too late to cancel

    fake.script("INSERT INTO orders VALUES (1), (2), (3)", Update("INSERT", 3))
    ctx = StopWhenFinished(job_id="job-late")

    outcome = run(engine_for(fake.url), "INSERT INTO orders VALUES (1), (2), (3)", ctx=ctx)

    assert ctx.stopping
    assert outcome.rows_affected == 3
    assert fake.deleted == []


class _StopWhenRunning(JobContext):
    """A job stopped as soon as Trino reports the statement RUNNING (mid-write)."""

    def progress(self, fraction: float, message: str) -> None:
        super().progress(fraction, message)
        if "RUNNING" in message:
            self.stop("cancelled")


def test_a_write_cancelled_in_time_is_job_stopped(fake: FakeTrino) -> None:
    fake.script("DELETE FROM orders", Update("DELETE", 10))
    ctx = _StopWhenRunning(job_id="job-write")

    with pytest.raises(JobStopped):
        run(engine_for(fake.url), "DELETE FROM orders", ctx=ctx)

    assert_deleted(fake, [fake.statements[0].query_id])


def test_a_write_that_committed_despite_the_cancel_is_reported(fake: FakeTrino) -> None:
    fake.script("DELETE FROM orders", Update("DELETE", 10, commits_despite_cancel=True))
    ctx = _StopWhenRunning(job_id="job-write")

    outcome = run(engine_for(fake.url), "DELETE FROM orders", ctx=ctx)

    assert ctx.stopping
    assert_deleted(fake, [fake.statements[0].query_id])
    assert outcome.rows_affected == 10


def test_a_write_whose_end_was_not_seen_is_commit_state_unknown(fake: FakeTrino) -> None:
    fake.script("DELETE FROM orders", Update("DELETE", 10, hang_up_at=2))

    with pytest.raises(CommitStateUnknown) as caught:
        run(engine_for(fake.url), "DELETE FROM orders")

    query_id = fake.statements[0].query_id
    assert caught.value.metadata == {
        "engine": "trino",
        "trino_update_type": "DELETE",
        "trino_query_id": query_id,
    }
    assert_deleted(fake, [query_id])  # and Trino was asked to drop it if it still runs


def test_an_existing_destination_is_already_exists(fake: FakeTrino) -> None:
    fake.script(
        re.compile(r"^CREATE TABLE "),
        Failure(
            "line 1:1: Table 'iceberg.reports.daily' already exists", "TABLE_ALREADY_EXISTS", 50
        ),
    )

    with pytest.raises(AlreadyExists):
        run(engine_for(fake.url), "SELECT 1", destination=("reports", "daily"))


# -- Cancellation --------------------------------------------------------------------------


class _Runner(threading.Thread):
    """Runs a statement in a thread, as the job worker does, keeping its outcome."""

    def __init__(self, engine: TrinoEngine, statement: str, ctx: JobContext) -> None:
        super().__init__(daemon=True)
        self.engine, self.statement, self.ctx = engine, statement, ctx
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run(self.engine, self.statement, ctx=self.ctx)
        except BaseException as exc:
            self.error = exc


def test_stopping_the_job_cancels_a_running_query(fake: FakeTrino) -> None:
    fake.script("SELECT slow()", Slow())
    ctx = JobContext(job_id="job-slow")
    runner = _Runner(engine_for(fake.url), "SELECT slow()", ctx)
    runner.start()
    query_id = fake.wait_until_running()

    started = time.monotonic()
    ctx.stop("cancelled")
    runner.join(timeout=2)

    assert not runner.is_alive(), "run_statement did not return within 2 s of the stop"
    assert time.monotonic() - started < 2
    assert isinstance(runner.error, JobStopped)
    assert runner.error.why == "cancelled"
    assert_deleted(fake, [query_id])
    progress = ctx.take_progress()
    assert progress is not None
    assert "RUNNING" in progress[1]


def test_a_stop_while_the_statement_is_being_sent_still_cancels_it(fake: FakeTrino) -> None:
    fake.script("SELECT slow()", Slow())
    fake.post_delay_seconds = 0.3
    ctx = JobContext(job_id="job-early")
    runner = _Runner(engine_for(fake.url), "SELECT slow()", ctx)
    runner.start()
    deadline = time.monotonic() + 5
    while not any(r.method == "POST" for r in fake.requests):
        assert time.monotonic() < deadline
        time.sleep(0.01)

    ctx.stop("shutdown")  # the POST has no answer yet: there is no query id to cancel
    runner.join(timeout=3)

    assert not runner.is_alive()
    assert isinstance(runner.error, JobStopped)
    assert runner.error.why == "shutdown"
    assert_deleted(fake, [fake.statements[0].query_id])


def test_a_job_stopped_before_the_statement_sends_nothing(fake: FakeTrino) -> None:
    ctx = JobContext(job_id="job-early")
    ctx.stop("lease_lost")

    with pytest.raises(JobStopped):
        run(engine_for(fake.url), "SELECT 1", ctx=ctx)

    assert fake.requests == []


def test_a_query_killed_in_trino_is_failed_precondition(fake: FakeTrino) -> None:
    fake.script(
        "SELECT 1", Failure("Query killed. Message: too big", "ADMINISTRATIVELY_KILLED", 38)
    )

    with pytest.raises(FailedPrecondition) as caught:
        run(engine_for(fake.url), "SELECT 1")

    assert caught.value.reason == "QUERY_KILLED"


# -- Failures ------------------------------------------------------------------------------


def test_a_statement_trino_rejects_at_run_time_is_invalid_argument(fake: FakeTrino) -> None:
    fake.script(
        "SELECT 1 / 0",
        Failure("Division by zero", "DIVISION_BY_ZERO", 8),
    )

    with pytest.raises(InvalidArgument) as caught:
        run(engine_for(fake.url), "SELECT 1 / 0")

    (violation,) = caught.value.violations
    assert violation.field == "sql.statement"
    assert violation.description == "Division by zero (DIVISION_BY_ZERO)"


@pytest.mark.parametrize(
    "failure",
    [
        INTERNAL_ERROR,
        Failure(
            "Query exceeded distributed user memory limit",
            "EXCEEDED_GLOBAL_MEMORY_LIMIT",
            131073,
            "INSUFFICIENT_RESOURCES",
        ),
        Failure(
            "Error reading from s3://bucket/x.parquet",
            "ICEBERG_FILESYSTEM_ERROR",
            16777216,
            "EXTERNAL",
        ),
    ],
    ids=["internal", "resources", "external"],
)
def test_a_trino_side_failure_is_unavailable(fake: FakeTrino, failure: Failure) -> None:
    fake.script("SELECT 1", failure)

    with pytest.raises(Unavailable) as caught:
        run(engine_for(fake.url), "SELECT 1")

    assert caught.value.reason == "ENGINE_UNAVAILABLE"
    assert failure.error_name in caught.value.message


def test_trino_down_is_unavailable_quickly() -> None:
    engine = engine_for(f"https://{LOOPBACK}:{free_port()}", password=PASSWORD)

    started = time.monotonic()
    errors = []
    for call in (
        lambda: run(engine, "SELECT 1"),
        lambda: engine.check_statement("SELECT 1"),
        engine.check,
    ):
        with pytest.raises(Unavailable) as caught:
            call()
        errors.append(caught.value)

    assert time.monotonic() - started < 10
    for error in errors:
        assert error.reason == "ENGINE_UNAVAILABLE"
        assert PASSWORD not in str(error)


# -- Health --------------------------------------------------------------------------------


def test_health_asks_v1_info(fake: FakeTrino) -> None:
    engine = engine_for(fake.url)

    engine.check()

    assert [r.path for r in fake.requests] == ["/v1/info"]


def test_a_starting_coordinator_is_unavailable(fake: FakeTrino) -> None:
    fake.starting = True

    with pytest.raises(Unavailable, match="starting"):
        engine_for(fake.url).check()
