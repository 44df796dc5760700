"""import_files stays inside its allowed ``file://`` prefixes whatever links lie there (issue 13).

A link under an allowed prefix to a file outside it, and a linked folder, were both imported;
an import of a link to /etc/passwd failed with an error quoting a line of it. Now local sources
are resolved to their real paths, checked against the (resolved) allowed prefixes, and opened
without following links; reader errors name the kind of problem, never the file's text.

Local disk only: object stores have no symbolic links (S3 keys are checked as written).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.imports.job import import_files
from lakehouse.adapters.imports.sources import ImportFormat
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.table_jobs import ImportOutcome

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType()),
)
PASSWD = Path("/etc/passwd")


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the landing folder, holding a file nobody allowed."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.csv").write_text("id,name\n1,the secret\n")
    return folder


@pytest.fixture
def table(local_settings: Any) -> Table:
    Path(local_settings.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(local_settings)
    catalog.create_namespace_if_not_exists("imp")
    return catalog.create_table(("imp", f"t_{uuid.uuid4().hex[:8]}"), SCHEMA)


def run(
    table: Table, landing: Path, *, prefix: str = "", uris: list[str] | None = None
) -> ImportOutcome:
    return import_files(
        table,
        source_prefix=prefix,
        source_uris=uris or [],
        file_format=ImportFormat.UNSPECIFIED,
        ctx=JobContext(job_id=f"job-{uuid.uuid4().hex[:8]}"),
        allowed_prefixes=[landing.as_uri() + "/"],
    )


def refusal(table: Table, landing: Path, **kw: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as exc:
        run(table, landing, **kw)
    return exc.value


def rows(table: Table) -> list[dict[str, Any]]:
    return sorted(table.refresh().scan().to_arrow().to_pylist(), key=lambda r: r["id"])


def test_a_link_to_a_file_outside_is_refused(table: Table, landing: Path, outside: Path) -> None:
    (landing / "orders.csv").symlink_to(outside / "secret.csv")
    err = refusal(table, landing, uris=[(landing / "orders.csv").as_uri()])
    assert err.violations[0].field == "import_files.source_uris[0]"
    assert "leads outside every prefix" in err.message
    assert "secret" not in err.message  # not even where the link points
    err = refusal(table, landing, prefix=landing.as_uri() + "/")
    assert err.violations[0].field == "import_files.source_prefix"
    assert "leads outside every prefix" in err.message
    assert table.refresh().metadata.snapshots == []


def test_a_linked_folder_is_refused(table: Table, landing: Path, outside: Path) -> None:
    (landing / "real.csv").write_text("id,name\n1,fine\n")
    (landing / "more").symlink_to(outside, target_is_directory=True)
    err = refusal(table, landing, prefix=landing.as_uri() + "/")
    assert "symbolic link to a folder" in err.message
    # Named file by file through the linked folder, too.
    err = refusal(table, landing, uris=[(landing / "more" / "secret.csv").as_uri()])
    assert "leads outside every prefix" in err.message
    # And as the prefix itself.
    err = refusal(table, landing, prefix=(landing / "more").as_uri() + "/")
    assert "leads outside every prefix" in err.message
    assert table.refresh().metadata.snapshots == []


@pytest.mark.skipif(not PASSWD.is_file(), reason="needs /etc/passwd")
def test_a_link_to_etc_passwd_is_refused_and_quotes_nothing_of_it(
    table: Table, landing: Path
) -> None:
    (landing / "users.csv").symlink_to(PASSWD)
    err = refusal(table, landing, uris=[(landing / "users.csv").as_uri()])
    assert "leads outside every prefix" in err.message
    lines = [line for line in PASSWD.read_text().splitlines() if line]
    fields = {f for line in lines for f in line.split(":") if len(f) >= 4}
    shown = err.message + " ".join(v.description for v in err.violations)
    assert not any(line in shown for line in lines)
    assert (
        not {f for f in fields if f in shown}
        - {"root", "bin", "home", "sbin", "false"}
        - set(str(landing).split("/"))
    )


@pytest.mark.skipif(not PASSWD.is_file(), reason="needs /etc/passwd")
def test_reader_errors_quote_no_line_of_the_file(table: Table, landing: Path) -> None:
    # /etc/passwd's content copied in (no link): read, it fails, and the error shows no line.
    (landing / "users.csv").write_bytes(PASSWD.read_bytes())
    err = refusal(table, landing, uris=[(landing / "users.csv").as_uri()])
    lines = [line for line in PASSWD.read_text().splitlines() if line]
    shown = err.message + " ".join(v.description for v in err.violations)
    assert not any(line in shown or line[:20] in shown for line in lines), shown


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("a.csv", b"id,name\n1,a\nroot:x:0:0:root,/root,/bin/bash\n", "a row has 3 fields"),
        ("b.csv", b"id,name\n1,a\nsecret-value,b\n", "a value is not a valid int64"),
        ("c.jsonl", b'{"id": 1}\nroot:x:0:0:root:/root:/bin/bash\n', "malformed JSON"),
        ("d.parquet", b"PAR1 root:x:0:0:root:/root:/bin/bash", "not a Parquet file"),
    ],
)
def test_parse_errors_name_the_kind_of_problem_not_the_text(
    table: Table, landing: Path, name: str, data: bytes, kind: str
) -> None:
    (landing / name).write_bytes(data)
    err = refusal(table, landing, uris=[(landing / name).as_uri()])
    assert kind in err.message, err.message
    for secret in ("root:x", "/bin/bash", "secret-value"):
        assert secret not in err.message, err.message


def test_dot_dot_after_resolution_is_refused(table: Table, landing: Path, outside: Path) -> None:
    # A link to the parent folder: landing/up/outside/secret.csv has no '..' as written, and
    # resolves to tmp/outside/secret.csv.
    (landing / "up").symlink_to(landing.parent, target_is_directory=True)
    uri = (landing / "up" / "outside" / "secret.csv").as_uri()
    err = refusal(table, landing, uris=[uri])
    assert "leads outside every prefix" in err.message
    # A link whose target is spelled with '..' but stays inside is fine.
    (landing / "data").mkdir()
    (landing / "data" / "x.csv").write_text("id,name\n7,inside\n")
    (landing / "again.csv").symlink_to(Path("data") / ".." / "data" / "x.csv")
    outcome = run(table, landing, uris=[(landing / "again.csv").as_uri()])
    assert outcome.rows_imported == 1


def test_a_link_inside_the_prefix_to_a_file_inside_still_works(table: Table, landing: Path) -> None:
    (landing / "2024").mkdir()
    (landing / "2024" / "orders.csv").write_text("id,name\n1,one\n2,two\n")
    (landing / "latest.csv").symlink_to(landing / "2024" / "orders.csv")
    outcome = run(table, landing, uris=[(landing / "latest.csv").as_uri()])
    assert outcome.rows_imported == 2
    # Listed with its target, the file is imported once, not twice.
    outcome = run(table, landing, prefix=landing.as_uri() + "/")
    assert (outcome.files_imported, outcome.rows_imported) == (1, 2)
    assert [r["id"] for r in rows(table)] == [1, 1, 2, 2]


def test_an_allowed_prefix_that_is_itself_a_link_works(tmp_path: Path, table: Table) -> None:
    real = tmp_path / "real-landing"
    real.mkdir()
    (real / "a.csv").write_text("id,name\n5,five\n")
    linked = tmp_path / "landing-link"
    linked.symlink_to(real, target_is_directory=True)
    outcome = run(table, linked, uris=[(linked / "a.csv").as_uri()])
    assert outcome.rows_imported == 1


def test_a_parquet_link_registered_in_place_names_the_real_file(
    table: Table, landing: Path
) -> None:
    import pyarrow.parquet as pq

    (landing / "p").mkdir()
    target = landing / "p" / "data.parquet"
    pq.write_table(
        pa.table(
            {"id": pa.array([1], pa.int64()), "name": ["x"]},
            schema=pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())]),
        ),
        target,
    )
    (landing / "link.parquet").symlink_to(target)
    outcome = run(table, landing, uris=[(landing / "link.parquet").as_uri()])
    assert outcome.rows_imported == 1
    paths = [task.file.file_path for task in table.refresh().scan().plan_files()]
    # Registered or rewritten, the table never points at the link (which could be swapped).
    assert not any("link.parquet" in p for p in paths), paths
    assert os.path.realpath(target) == str(target.resolve())


class SwapBeforeReading(JobContext):
    """A real JobContext that, when the import first checks in (after its sources were
    resolved, before any is read), runs ``swap``: the race of a link put in place meanwhile."""

    def __init__(self, swap: Any) -> None:
        super().__init__(job_id=f"job-{uuid.uuid4().hex[:8]}")
        self._swap = swap

    def check(self) -> None:
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        super().check()


def run_racing(table: Table, landing: Path, uri: str, swap: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as exc:
        import_files(
            table,
            source_prefix="",
            source_uris=[uri],
            file_format=ImportFormat.UNSPECIFIED,
            ctx=SwapBeforeReading(swap),
            allowed_prefixes=[landing.as_uri() + "/"],
        )
    return exc.value


def test_a_file_swapped_for_a_link_after_the_check_is_not_followed(
    table: Table, landing: Path, outside: Path
) -> None:
    source = landing / "orders.csv"
    source.write_text("id,name\n1,one\n")

    def swap() -> None:
        source.unlink()
        source.symlink_to(outside / "secret.csv")

    err = run_racing(table, landing, source.as_uri(), swap)
    assert "became a symbolic link" in err.message
    assert "secret" not in err.message
    assert table.refresh().metadata.snapshots == []


def test_a_folder_swapped_for_a_link_after_the_check_is_caught(
    table: Table, landing: Path, outside: Path
) -> None:
    folder = landing / "day"
    folder.mkdir()
    (folder / "secret.csv").write_text("id,name\n1,one\n")

    def swap() -> None:
        (folder / "secret.csv").unlink()
        folder.rmdir()
        folder.symlink_to(outside, target_is_directory=True)  # day/secret.csv is outside now

    err = run_racing(table, landing, (folder / "secret.csv").as_uri(), swap)
    assert "leads outside every prefix" in err.message
    assert table.refresh().metadata.snapshots == []
