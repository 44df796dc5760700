"""Who may call what: the permissions, the roles, and the one method → permission table.

Every RPC of ``lakehouse.v1`` has exactly one entry in :data:`RULES`; a test compares the table
with the services' descriptors, so an RPC added to the contract without a decision about who
may call it fails CI instead of shipping open (the interceptor also refuses unmapped methods
to everyone but admin at run time).

A rule names the permission a call needs, which may depend on the request (``CreateJob``
needs ``maintenance.destructive`` for snapshot expiry and orphan file removal, which delete
files, and ``jobs.create`` otherwise), a further permission some requests need on top of it
(``WriteRows`` and ``AppendRows`` in a write mode that removes rows also need
``tables.change_rows``), and what the call acts on: the namespaces that per-namespace grants
are checked against, and the target written to the audit log.

:func:`check` is the one decision of whether a caller may make a request, shared by the gRPC
auth interceptor and the Arrow Flight port (which checks each action against the rule of the
gRPC method it stands for), so a rule or role change applies to both ports.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from lakehouse.config import RoleName
from lakehouse.domain.errors import PermissionDenied
from lakehouse.domain.read_sessions import claimed_table
from lakehouse.v1 import ingest_pb2

if TYPE_CHECKING:  # credentials imports this module (the roles' order)
    from lakehouse.server.credentials import Principal

TABLE_SERVICE: Final = "lakehouse.v1.TableService"
INGEST_SERVICE: Final = "lakehouse.v1.IngestService"
JOB_SERVICE: Final = "lakehouse.v1.JobService"
HEALTH_SERVICE: Final = "grpc.health.v1.Health"
REFLECTION_SERVICES: Final = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


class Permission(enum.StrEnum):
    """What a role may do. The value is the name clients see in PERMISSION_DENIED errors."""

    TABLES_READ = "tables.read"
    """Read namespaces, tables, snapshots, rows and writers' positions."""
    TABLES_WRITE = "tables.write"
    """Create and change namespaces and tables (schema, properties, renames)."""
    TABLES_DELETE = "tables.delete"
    """Drop tables (with or without purge) and namespaces."""
    TABLES_ROLLBACK = "tables.rollback"
    """Move a table back to an older snapshot, dropping newer commits from its history."""
    TABLES_REGISTER = "tables.register"
    """Register a table from any metadata file (it can point at another table's files)."""
    INGEST_WRITE = "ingest.write"
    """Write rows (AppendRows, WriteRows)."""
    TABLES_CHANGE_ROWS = "tables.change_rows"
    """Delete or replace rows: DeleteRows, and writes in the OVERWRITE, OVERWRITE_PARTITIONS
    and UPSERT modes (which also need ingest.write), and SQL jobs that DELETE, UPDATE or
    MERGE."""
    JOBS_READ = "jobs.read"
    """Get, list and watch jobs."""
    JOBS_CREATE = "jobs.create"
    """Create SQL, compaction and import jobs."""
    JOBS_CANCEL = "jobs.cancel"
    """Cancel jobs."""
    JOBS_DELETE = "jobs.delete"
    """Delete finished jobs' records."""
    MAINTENANCE_DESTRUCTIVE = "maintenance.destructive"
    """Create jobs that delete files: expire_snapshots and remove_orphan_files."""


#: Permissions of calls that change nothing. Every other call is audited.
READ_PERMISSIONS: Final = frozenset({Permission.TABLES_READ, Permission.JOBS_READ})

_VIEWER = frozenset({Permission.TABLES_READ, Permission.JOBS_READ})
_DEVELOPER = _VIEWER | {
    Permission.TABLES_WRITE,
    Permission.INGEST_WRITE,
    Permission.JOBS_CREATE,
    Permission.JOBS_CANCEL,
}
#: What each role may do. Roles nest: each has everything of the one before.
ROLE_PERMISSIONS: Final[Mapping[RoleName, frozenset[Permission]]] = {
    "viewer": _VIEWER,
    "developer": _DEVELOPER,
    "admin": frozenset(Permission),
}
#: The roles, least privileged first (a JWT listing several roles gets the last one it has).
ROLE_ORDER: Final[tuple[RoleName, ...]] = ("viewer", "developer", "admin")


@dataclass(frozen=True)
class Target:
    """What one call acts on.

    Attributes:
        namespaces: Every namespace the call touches; a namespace-limited caller must hold
            a grant for each.
        attributes: The target as the audit log shows it (``namespace``, ``table``,
            ``job_id``, ``kind``...).
        any_namespace: The call may reach any namespace (a SQL statement names its tables
            in its text), so only callers without namespace grants may make it.
        job_id: A job named by id; its namespace is looked up for namespace-limited callers.
    """

    namespaces: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    any_namespace: bool = False
    job_id: str = ""


def _nothing(request: Any) -> Target:
    return Target()


def _namespace_by_name(request: Any) -> Target:
    return Target((request.name,), {"namespace": request.name})


def _namespace(request: Any) -> Target:
    return Target((request.namespace,), {"namespace": request.namespace})


def _table(request: Any) -> Target:
    return Target((request.namespace,), {"namespace": request.namespace, "table": request.table})


def _read_target(request: Any) -> Target:
    """A ReadRows of a table, or of a read session's stream: the table its name claims.

    The claim is checked against the caller's grants here and the name's signature when the
    stream is read, so a name altered to pass the grants fails there. A request that names a
    namespace is authorized on it, session or not: whatever reads it (the gRPC port refuses
    the pair, the Flight port reads the table named), a claim never stands in for the table
    the request names.
    """
    if request.namespace or not request.read_session:
        return _table(request)
    namespace, table = claimed_table(request.read_session)
    return Target((namespace,), {"namespace": namespace, "table": table})


def _rename(request: Any) -> Target:
    destination = request.new_namespace or request.namespace
    return Target(
        (request.namespace, destination),
        {
            "namespace": request.namespace,
            "table": request.table,
            "new_namespace": destination,
            "new_table": request.new_table,
        },
    )


def _job_by_id(request: Any) -> Target:
    return Target(attributes={"job_id": request.job_id}, job_id=request.job_id)


def _job_filter(request: Any) -> Target:
    # Without a namespace filter the listing is filtered instead (see filter_response).
    return _namespace(request) if request.namespace else Target()


#: CreateJob spec kinds whose jobs delete files.
DESTRUCTIVE_JOB_KINDS: Final = frozenset({"expire_snapshots", "remove_orphan_files"})


def _job_spec(request: Any) -> Target:
    kind = request.spec.WhichOneof("kind")
    if kind is None:
        return Target()
    if kind == "sql":
        sql = request.spec.sql
        destination = sql.destination_namespace or sql.default_namespace
        attributes = {"kind": kind}
        if sql.destination_table:
            attributes |= {"namespace": destination, "table": sql.destination_table}
        return Target(attributes=attributes, any_namespace=True)
    spec = getattr(request.spec, kind)
    return Target(
        (spec.namespace,), {"kind": kind, "namespace": spec.namespace, "table": spec.table}
    )


#: The write modes that only add rows; every other one, unknown numbers included, may remove
#: rows, so a mode this server does not know is refused to those who may not remove rows.
APPEND_WRITE_MODES: Final = frozenset(
    {ingest_pb2.WRITE_MODE_UNSPECIFIED, ingest_pb2.WRITE_MODE_APPEND}
)


def _write_mode_permission(request: Any) -> Permission | None:
    # Read as a number: an unknown enum number stays one in proto3, never APPEND.
    if request.write_mode in APPEND_WRITE_MODES:
        return None
    return Permission.TABLES_CHANGE_ROWS


#: A SQL statement that may delete or replace rows (DELETE, UPDATE, MERGE). Matched anywhere
#: in the text, not parsed: a query that merely names a column "update" also needs the
#: permission, which errs towards asking for more, never less.
_ROW_CHANGING_SQL: Final = re.compile(r"\b(delete|update|merge)\b", re.IGNORECASE)


def _job_permission(request: Any) -> Permission:
    kind = request.spec.WhichOneof("kind")
    if kind in DESTRUCTIVE_JOB_KINDS:
        return Permission.MAINTENANCE_DESTRUCTIVE
    if kind == "sql" and _ROW_CHANGING_SQL.search(request.spec.sql.statement):
        return Permission.TABLES_CHANGE_ROWS
    return Permission.JOBS_CREATE


def _granted_namespaces(response: Any, granted: Callable[[str], bool]) -> None:
    kept = [ns for ns in response.namespaces if granted(ns.name)]
    del response.namespaces[:]
    response.namespaces.extend(kept)


def _granted_jobs(response: Any, granted: Callable[[str], bool]) -> None:
    kept = [job for job in response.jobs if job.namespace and granted(job.namespace)]
    del response.jobs[:]
    response.jobs.extend(kept)


@dataclass(frozen=True)
class Rule:
    """Who may call one method, and what it acts on.

    Attributes:
        permission: The permission needed, or a function of the request that returns it.
        target: What a request acts on (for namespace grants and the audit log). For
            client-streaming methods it is applied to every request message.
        filter_response: For list methods: removes from a response, in place, the entries a
            namespace-limited caller may not see (a page may then hold fewer entries than
            asked for, which list methods allow; paging is unchanged).
        further_permission: A permission some requests need on top of ``permission`` (a
            function of the request: None when it needs no more). Checked after
            ``permission``; for client-streaming methods on every request message, before
            the handler reads it, so a stream that asks for more than its caller may do
            mid-way fails there and that message is never acted on.
    """

    permission: Permission | Callable[[Any], Permission]
    target: Callable[[Any], Target] = _nothing
    filter_response: Callable[[Any, Callable[[str], bool]], None] | None = None
    further_permission: Callable[[Any], Permission | None] | None = None

    def permission_for(self, request: Any) -> Permission:
        """The permission ``request`` needs (client-streaming methods: pass None)."""
        if isinstance(self.permission, Permission):
            return self.permission
        return self.permission(request)

    @property
    def fixed_permission(self) -> Permission | None:
        """The permission when it does not depend on the request."""
        return self.permission if isinstance(self.permission, Permission) else None

    def further_permission_for(self, request: Any) -> Permission | None:
        """The permission ``request`` needs on top of :meth:`permission_for`, if any."""
        if self.further_permission is None:
            return None
        return self.further_permission(request)


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


P = Permission
#: THE table: every RPC of lakehouse.v1 and the rule it is checked by.
RULES: Final[Mapping[str, Rule]] = {
    # TableService
    _method(TABLE_SERVICE, "CreateNamespace"): Rule(P.TABLES_WRITE, _namespace_by_name),
    _method(TABLE_SERVICE, "GetNamespace"): Rule(P.TABLES_READ, _namespace_by_name),
    _method(TABLE_SERVICE, "ListNamespaces"): Rule(
        P.TABLES_READ, filter_response=_granted_namespaces
    ),
    _method(TABLE_SERVICE, "UpdateNamespaceProperties"): Rule(P.TABLES_WRITE, _namespace_by_name),
    _method(TABLE_SERVICE, "DeleteNamespace"): Rule(P.TABLES_DELETE, _namespace_by_name),
    _method(TABLE_SERVICE, "CreateTable"): Rule(P.TABLES_WRITE, _table),
    _method(TABLE_SERVICE, "GetTable"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "ListTables"): Rule(P.TABLES_READ, _namespace),
    _method(TABLE_SERVICE, "DeleteTable"): Rule(P.TABLES_DELETE, _table),
    _method(TABLE_SERVICE, "RenameTable"): Rule(P.TABLES_WRITE, _rename),
    _method(TABLE_SERVICE, "RegisterTable"): Rule(P.TABLES_REGISTER, _table),
    _method(TABLE_SERVICE, "UpdateTable"): Rule(P.TABLES_WRITE, _table),
    _method(TABLE_SERVICE, "ListSnapshots"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "GetSnapshot"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "RollbackTable"): Rule(P.TABLES_ROLLBACK, _table),
    _method(TABLE_SERVICE, "ReadRows"): Rule(P.TABLES_READ, _read_target),
    _method(TABLE_SERVICE, "CreateReadSession"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "CreateBranch"): Rule(P.TABLES_WRITE, _table),
    _method(TABLE_SERVICE, "CreateTag"): Rule(P.TABLES_WRITE, _table),
    _method(TABLE_SERVICE, "ListRefs"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "DeleteRef"): Rule(P.TABLES_DELETE, _table),
    _method(TABLE_SERVICE, "PublishBranch"): Rule(P.TABLES_WRITE, _table),
    _method(TABLE_SERVICE, "GetTableHealth"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "WatchTable"): Rule(P.TABLES_READ, _table),
    _method(TABLE_SERVICE, "DeleteRows"): Rule(P.TABLES_CHANGE_ROWS, _table),
    # IngestService
    _method(INGEST_SERVICE, "AppendRows"): Rule(
        P.INGEST_WRITE, _table, further_permission=_write_mode_permission
    ),
    _method(INGEST_SERVICE, "WriteRows"): Rule(
        P.INGEST_WRITE, _table, further_permission=_write_mode_permission
    ),
    _method(INGEST_SERVICE, "GetWriter"): Rule(P.TABLES_READ, _table),
    # JobService
    _method(JOB_SERVICE, "CreateJob"): Rule(_job_permission, _job_spec),
    _method(JOB_SERVICE, "GetJob"): Rule(P.JOBS_READ, _job_by_id),
    _method(JOB_SERVICE, "ListJobs"): Rule(P.JOBS_READ, _job_filter, _granted_jobs),
    _method(JOB_SERVICE, "CancelJob"): Rule(P.JOBS_CANCEL, _job_by_id),
    _method(JOB_SERVICE, "WatchJob"): Rule(P.JOBS_READ, _job_by_id),
    _method(JOB_SERVICE, "DeleteJob"): Rule(P.JOBS_DELETE, _job_by_id),
}
del P


def is_authenticated_only(service: str) -> bool:
    """Whether any authenticated caller, whatever its role, may call ``service``.

    Health and reflection expose nothing of the data; when they are not configured public
    they still need credentials, but no permission.
    """
    return service == HEALTH_SERVICE or service in REFLECTION_SERVICES


def role_allows(role: RoleName, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``."""
    return permission in ROLE_PERMISSIONS[role]


def check_role(principal: Principal, permission: str, method: str) -> None:
    """Refuses the call unless ``principal``'s role holds ``permission``.

    Args:
        principal: The caller.
        permission: The permission needed.
        method: The call as the error names it (a gRPC method, or a Flight action).

    Raises:
        PermissionDenied: The role lacks ``permission``.
    """
    if not role_allows(principal.role, Permission(permission)):
        raise PermissionDenied(
            f"permission denied: {method} needs {permission}, which role {principal.role} "
            "does not have",
            permission=permission,
        )


def check_further(principal: Principal, rule: Rule, request: Any, method: str) -> Permission | None:
    """The further permission ``request`` needs (see :attr:`Rule.further_permission`), if any.

    Raises:
        PermissionDenied: The role lacks it.
    """
    further = rule.further_permission_for(request)
    if further is not None and not role_allows(principal.role, further):
        raise PermissionDenied(
            f"permission denied: this {method} request needs {further} besides "
            f"{rule.permission_for(request)}, which role {principal.role} does not have",
            permission=further,
        )
    return further


def check_namespaces(principal: Principal, target: Target, permission: str) -> None:
    """Refuses a call reaching beyond a namespace-limited caller's grants.

    A job named by id (``target.job_id``) needs its namespace looked up: the caller does
    that (the gRPC interceptor, with the job store).

    Raises:
        PermissionDenied: A namespace outside the grants, or a call that may reach any.
    """
    if principal.namespaces is None:
        return
    if target.any_namespace:
        raise PermissionDenied(
            "permission denied: this call may reach any namespace (a SQL statement names "
            "its own tables) and the caller is limited to some namespaces",
            permission=permission,
        )
    for namespace in target.namespaces:
        if not principal.may_touch(namespace):
            raise PermissionDenied(
                f"permission denied: namespace {namespace!r} is outside the caller's "
                "namespace grants",
                permission=permission,
                metadata={"namespace": namespace},
            )


def check(principal: Principal, method: str, request: Any, *, label: str = "") -> Permission:
    """Whether ``principal`` may make ``request`` as the gRPC ``method``: the one decision.

    The method's rule gives the permission (the role must hold it), any further permission
    the request needs (a write mode that removes rows), and the namespaces a
    namespace-limited caller must hold grants for. Jobs named by id are left to the caller
    (their namespace is looked up in the job store).

    Args:
        principal: The caller.
        method: The gRPC method (``/lakehouse.v1.TableService/ReadRows``), in :data:`RULES`.
        request: The request message.
        label: How errors name the call (a Flight action); ``method`` by default.

    Returns:
        The permission the audit log names: the further one when the request needed one.

    Raises:
        PermissionDenied: The role or the namespace grants do not cover the request; its
            ``permission`` names the one missing.
    """
    rule = RULES[method]
    label = label or method
    permission = rule.permission_for(request)
    check_role(principal, permission, label)
    audited = check_further(principal, rule, request, label) or permission
    check_namespaces(principal, rule.target(request), audited)
    return audited
