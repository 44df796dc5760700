"""The method → permission table and the roles, checked against the contract itself."""

from __future__ import annotations

import typing

import pytest

from fixtures.contract import contract_methods
from lakehouse.config import RoleName
from lakehouse.server.permissions import (
    READ_PERMISSIONS,
    ROLE_ORDER,
    ROLE_PERMISSIONS,
    RULES,
    Permission,
    is_authenticated_only,
    role_allows,
)
from lakehouse.v1 import ingest_pb2, job_pb2, namespace_pb2
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb


def test_every_rpc_of_the_contract_has_exactly_one_rule() -> None:
    methods = contract_methods()
    services = {path.split("/")[1] for path in methods}
    assert services >= {f"lakehouse.v1.{s}Service" for s in ("Table", "Ingest", "Job")}
    missing = sorted(set(methods) - set(RULES))
    stale = sorted(set(RULES) - set(methods))
    assert missing == [], f"RPCs without a permission (add them to RULES): {missing}"
    assert stale == [], f"RULES entries for RPCs that do not exist: {stale}"


def test_client_streaming_rpcs_have_a_permission_known_before_the_first_message() -> None:
    for path, method in contract_methods().items():
        if method.client_streaming:
            assert RULES[path].fixed_permission is not None, path


def test_roles_are_the_configured_ones_and_nest() -> None:
    assert tuple(typing.get_args(RoleName)) == ROLE_ORDER
    assert set(ROLE_PERMISSIONS) == set(ROLE_ORDER)
    viewer, developer, admin = (ROLE_PERMISSIONS[r] for r in ROLE_ORDER)
    assert viewer < developer < admin
    assert admin == frozenset(Permission)
    assert viewer == READ_PERMISSIONS  # a viewer changes nothing


@pytest.mark.parametrize(
    ("kind", "spec", "permission"),
    [
        ("sql", job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1")), "jobs.create"),
        (
            "compact_table",
            job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace="a", table="t")),
            "jobs.create",
        ),
        (
            "import_files",
            job_pb2.JobSpec(import_files=job_pb2.ImportFilesJobSpec(namespace="a", table="t")),
            "jobs.create",
        ),
        (
            "expire_snapshots",
            job_pb2.JobSpec(
                expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(namespace="a", table="t")
            ),
            "maintenance.destructive",
        ),
        (
            "remove_orphan_files",
            job_pb2.JobSpec(
                remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(namespace="a", table="t")
            ),
            "maintenance.destructive",
        ),
        ("unset", job_pb2.JobSpec(), "jobs.create"),
    ],
)
def test_create_job_permission_follows_the_spec_kind(
    kind: str, spec: job_pb2.JobSpec, permission: str
) -> None:
    # Every JobSpec kind is listed above: a new kind must get a decision here too.
    assert {f.name for f in job_pb2.JobSpec.DESCRIPTOR.oneofs_by_name["kind"].fields} == {
        "sql",
        "compact_table",
        "import_files",
        "expire_snapshots",
        "remove_orphan_files",
    }
    rule = RULES["/lakehouse.v1.JobService/CreateJob"]
    assert rule.permission_for(jpb.CreateJobRequest(spec=spec)) == permission


#: Every WriteMode, and whether a write in it may remove rows (so needs tables.change_rows).
#: Unknown numbers (a newer client's mode) are refused to those who may not remove rows.
WRITE_MODES = [
    (ingest_pb2.WRITE_MODE_UNSPECIFIED, False),
    (ingest_pb2.WRITE_MODE_APPEND, False),
    (ingest_pb2.WRITE_MODE_OVERWRITE, True),
    (ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS, True),
    (ingest_pb2.WRITE_MODE_UPSERT, True),
    (5, True),
    (2**31 - 1, True),
    (-1, True),
]


@pytest.mark.parametrize(("mode", "removes_rows"), WRITE_MODES)
def test_writes_that_remove_rows_need_change_rows_besides_ingest_write(
    mode: int, removes_rows: bool
) -> None:
    # Every WriteMode is listed above: a new mode must get a decision here too.
    assert set(ingest_pb2.WriteMode.values()) <= {m for m, _ in WRITE_MODES}
    further = Permission.TABLES_CHANGE_ROWS if removes_rows else None
    for path, request in [
        ("/lakehouse.v1.IngestService/WriteRows", ipb.WriteRowsRequest(write_mode=mode)),  # type: ignore[arg-type]
        ("/lakehouse.v1.IngestService/AppendRows", ipb.AppendRowsRequest(write_mode=mode)),  # type: ignore[arg-type]
    ]:
        rule = RULES[path]
        assert rule.permission_for(request) == Permission.INGEST_WRITE, path
        assert rule.further_permission_for(request) == further, path


def test_removing_rows_is_for_admins_only() -> None:
    change_rows = Permission.TABLES_CHANGE_ROWS
    assert RULES["/lakehouse.v1.TableService/DeleteRows"].fixed_permission == change_rows
    assert [r for r in ROLE_ORDER if role_allows(r, change_rows)] == ["admin"]
    assert change_rows not in READ_PERMISSIONS  # audited
    # Nothing else asks for more than its method's permission.
    assert {p for p, r in RULES.items() if r.further_permission is not None} == {
        "/lakehouse.v1.IngestService/WriteRows",
        "/lakehouse.v1.IngestService/AppendRows",
    }


#: Creates that store nothing: a read session is a signed name, planned and forgotten.
STATELESS_CREATES = frozenset({"CreateReadSession"})


def test_reads_are_the_get_list_read_and_watch_methods() -> None:
    """A mutating method with a read permission would escape the audit log."""
    for path, rule in RULES.items():
        name = path.rsplit("/", 1)[1]
        reads = name.startswith(("Get", "List", "Read", "Watch")) or name in STATELESS_CREATES
        if rule.fixed_permission is not None:
            assert (rule.fixed_permission in READ_PERMISSIONS) == reads, path


def test_targets_name_every_namespace_a_call_touches() -> None:
    rename = RULES["/lakehouse.v1.TableService/RenameTable"].target(
        tpb.RenameTableRequest(namespace="a", table="t", new_namespace="b", new_table="u")
    )
    assert rename.namespaces == ("a", "b")
    assert rename.attributes["new_namespace"] == "b"
    same = RULES["/lakehouse.v1.TableService/RenameTable"].target(
        tpb.RenameTableRequest(namespace="a", table="t", new_table="u")
    )
    assert same.namespaces == ("a", "a")

    sql = RULES["/lakehouse.v1.JobService/CreateJob"].target(
        jpb.CreateJobRequest(
            spec=job_pb2.JobSpec(
                sql=job_pb2.SqlJobSpec(
                    statement="SELECT * FROM hr.salaries",
                    destination_namespace="a",
                    destination_table="t",
                )
            )
        )
    )
    assert sql.any_namespace  # the statement may name any table
    assert sql.attributes == {"kind": "sql", "namespace": "a", "table": "t"}

    job = RULES["/lakehouse.v1.JobService/WatchJob"].target(jpb.WatchJobRequest(job_id="j1"))
    assert job.job_id == "j1"

    listing = RULES["/lakehouse.v1.JobService/ListJobs"].target(jpb.ListJobsRequest())
    assert listing.namespaces == ()
    create_ns = RULES["/lakehouse.v1.TableService/CreateNamespace"].target(
        tpb.CreateNamespaceRequest(name="a")
    )
    assert create_ns.namespaces == ("a",)


def test_list_responses_are_filtered_to_the_granted_namespaces() -> None:
    namespaces = tpb.ListNamespacesResponse(
        namespaces=[namespace_pb2.Namespace(name=n) for n in ("a", "b", "c")],
        next_page_token="next",
    )
    rule = RULES["/lakehouse.v1.TableService/ListNamespaces"]
    assert rule.filter_response is not None
    rule.filter_response(namespaces, {"a", "c"}.__contains__)
    assert [n.name for n in namespaces.namespaces] == ["a", "c"]
    assert namespaces.next_page_token == "next"  # paging is unchanged

    jobs = jpb.ListJobsResponse(
        jobs=[
            job_pb2.Job(id="1", namespace="a"),
            job_pb2.Job(id="2", namespace="b"),
            job_pb2.Job(id="3", namespace=""),  # a SQL job without destination: any namespace
        ]
    )
    rule = RULES["/lakehouse.v1.JobService/ListJobs"]
    assert rule.filter_response is not None
    rule.filter_response(jobs, {"a"}.__contains__)
    assert [j.id for j in jobs.jobs] == ["1"]


def test_health_and_reflection_need_no_permission() -> None:
    assert is_authenticated_only("grpc.health.v1.Health")
    assert is_authenticated_only("grpc.reflection.v1alpha.ServerReflection")
    assert not is_authenticated_only("lakehouse.v1.TableService")


@pytest.mark.parametrize(
    ("statement", "permission"),
    [
        ("SELECT count(*) FROM sales.orders", "jobs.create"),
        ("INSERT INTO sales.orders SELECT * FROM sales.staged", "jobs.create"),
        ("DELETE FROM sales.orders WHERE id = 1", "tables.change_rows"),
        ("  update sales.orders SET amount = 0 WHERE id = 1", "tables.change_rows"),
        (
            "MERGE INTO sales.orders t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "tables.change_rows",
        ),
        # Not parsed: a word that could change rows asks for the permission, never less.
        ("SELECT id AS update FROM sales.orders", "tables.change_rows"),
    ],
)
def test_sql_jobs_that_delete_or_update_rows_need_change_rows(
    statement: str, permission: str
) -> None:
    spec = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=statement))
    rule = RULES["/lakehouse.v1.JobService/CreateJob"]
    assert rule.permission_for(jpb.CreateJobRequest(spec=spec)) == permission
