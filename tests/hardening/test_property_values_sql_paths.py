"""A SQL job whose spill space runs out names no server path (issue 13 review).

The SQL engine's storage, permission and memory errors were passed through as the engine's
first line, which quotes the file it failed on: a job that ran out of disk while spilling
answered ``Could not write file "/srv/.../tmp/sql/duckdb-.../duckdb_temp_storage...tmp"``,
showing where the server keeps its temp folder. They are now cut to the file's name, like
the catalog's errors.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.duckdb.engine import run_statement
from lakehouse.domain.errors import LakehouseError
from lakehouse.domain.job_context import JobContext

#: Sorting this with a 16 MB memory limit spills tens of MB to the temp folder.
SPILLING_SORT = (
    "SELECT x, md5(x::VARCHAR) AS h FROM (SELECT range AS x FROM range(1500000)) ORDER BY h"
)


@contextmanager
def _small_files(limit_bytes: int) -> Iterator[None]:
    """Lets this process write no file past ``limit_bytes``: a full disk, for the spill.

    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG as on a full disk
    (ENOSPC); both come back from DuckDB as the same IO error quoting the file.
    """
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


def test_a_job_whose_spill_disk_is_full_names_no_server_path(
    local_settings: Any, tmp_path: Path
) -> None:
    Path(local_settings.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(local_settings)
    temp_dir = tmp_path / "server-temp" / "sql"
    with pytest.raises(LakehouseError) as info, _small_files(1 << 20):
        run_statement(
            catalog,
            statement=SPILLING_SORT,
            default_namespace="",
            preview_limit=1,
            destination=None,
            ctx=JobContext("job-full-disk"),
            memory_limit_mb=16,
            threads=1,
            temp_dir=temp_dir,
            temp_limit_mb=1024,  # the disk fills first
        )
    message = info.value.message
    assert "Could not write file" in message  # the storage failure this test is about
    assert str(tmp_path) not in message, message
    assert "server-temp" not in message, message
