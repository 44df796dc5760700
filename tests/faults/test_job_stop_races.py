"""A SQL job stopped at an awkward moment: it stops (JobStopped), it does not fail.

Found by ``test_job_faults.py::test_a_stopped_worker_hands_its_job_back`` now and then: a
SIGTERM that reached the worker while the SQL engine was still registering the statement's
tables interrupted DuckDB there, and the job FAILED with INTERNAL instead of going back to
the queue. Here the stop lands at exactly that point, every time (the test hooks the one
call DuckDB makes into the table source while registering it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.duckdb.engine import run_statement
from lakehouse.adapters.duckdb.scan_source import IcebergSource
from lakehouse.domain.job_context import JobContext, JobStopped

pytestmark = pytest.mark.faults

NS = "faults"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("destination", [None, (NS, "copy")], ids=["query", "destination"])
def test_a_stop_while_tables_register_stops_the_job(
    destination: tuple[str, str] | None,
    local_settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local_settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(local_settings)
    catalog.create_namespace(NS)
    data = pa.table({"id": pa.array(range(1000), pa.int64())})
    catalog.create_table((NS, "numbers"), schema=data.schema).append(data)
    ctx = JobContext("job-1")
    schema_of = IcebergSource.__arrow_c_schema__

    def stop_while_registering(source: Any) -> object:
        # DuckDB asks for the schema while it registers the table: the stop (what SIGTERM
        # does to a running job) interrupts that call.
        ctx.stop("shutdown")
        return schema_of(source)

    monkeypatch.setattr(IcebergSource, "__arrow_c_schema__", stop_while_registering)
    with pytest.raises(JobStopped) as stopped:
        run_statement(
            catalog,
            statement=f"SELECT count(*) AS n FROM {NS}.numbers",
            default_namespace="",
            preview_limit=10,
            destination=destination,
            ctx=ctx,
            memory_limit_mb=256,
            threads=1,
            temp_dir=tmp_path / "spill",
        )
    assert stopped.value.why == "shutdown"
    assert not catalog.table_exists((NS, "copy"))  # nothing committed
