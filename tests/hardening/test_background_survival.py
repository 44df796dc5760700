"""One bad table never stops a background loop (issue 13, finding 2).

A table whose ``py-io-impl`` was ``sys.exit`` raised ``SystemExit`` in the maintenance
scheduler's task; an asyncio task that ends with ``SystemExit`` stops the event loop, so the
server exited, and after every restart again. The service no longer lets table properties
reach pyiceberg's FileIO (``test_table_properties.py``); here the scheduler meets that
``SystemExit`` anyway, through a catalog loaded the way pyiceberg loads it without the
service's confinement, and must log it, carry on with the other tables, and still stop when
its own task is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.iceberg.catalog import IcebergCatalog, catalog_properties
from lakehouse.adapters.object_store import object_store_for
from lakehouse.adapters.pyiceberg_private.io import confine_catalog_io
from lakehouse.blocking import BlockingPool
from lakehouse.core.maintenance_scheduler import MaintenanceScheduler
from lakehouse.core.survival import EscapedError, contained, tamed
from lakehouse.server.job_runtime import JobRuntime

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True))
POLICY = {"history.expire.min-snapshots-to-keep": "1", "history.expire.max-snapshot-age-ms": "0"}


class UnconfinedCatalog(IcebergCatalog):
    """The service's catalog adapter over a pyiceberg catalog as pyiceberg loads it.

    Without ``confine_catalog_io`` pyiceberg imports and calls a table's ``py-io-impl``: the
    ``SystemExit`` below is pyiceberg's own doing, as it was in the service before.
    """

    def _load(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog(
                self._settings.catalog.name, **catalog_properties(self._settings)
            )
        return self._catalog


def _table(settings: Any, name: str, properties: dict[str, str]) -> None:
    catalog = confine_catalog_io(direct_catalog(settings))  # safe to write a hostile table
    catalog.create_namespace_if_not_exists("b")
    table = catalog.create_table(("b", name), schema=SCHEMA, properties=properties)
    for i in range(2):  # two snapshots, both older than the policy's 0 ms: expiry is due
        table.append(pa.table({"id": pa.array([i], pa.int64())}, schema=SCHEMA.as_arrow()))


async def _runtime(backend: Any, *, slots: int) -> tuple[BlockingPool, Any, JobRuntime]:
    """A job runtime over an unconfined catalog (the tables carry hostile properties)."""
    pool = BlockingPool(2)
    catalog = UnconfinedCatalog(backend, pool)
    runtime = JobRuntime(
        backend,
        catalog,
        object_store_for(backend.warehouse, backend.s3),
        pool,
        slots=slots,
        scheduler=False,
    )
    await pool.run(runtime.store.migrate)
    return pool, catalog, runtime


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_scheduler_survives_system_exit_of_one_table(backend: Any) -> None:
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    _table(backend, "a_bad", {**POLICY, "py-io-impl": "sys.exit"})
    _table(backend, "z_good", POLICY)
    pool, catalog, runtime = await _runtime(backend, slots=0)
    scheduler = MaintenanceScheduler(
        catalog, runtime.jobs, runtime.store, pool, interval_seconds=0.05
    )
    try:
        scheduler.start()
        deadline = time.monotonic() + 30
        scheduled: set[str] = set()
        while time.monotonic() < deadline and "z_good" not in scheduled:
            page = await runtime.jobs.list(
                states=[], kinds=[], namespace="b", table="", requested_size=100, token=""
            )
            scheduled = {job.table for job in page.items}
            await asyncio.sleep(0.05)
        # The bad table comes first in every pass; the good one after it is still maintained.
        assert scheduled == {"z_good"}
        task = scheduler._task
        assert task is not None and not task.done()
        await scheduler.stop()  # its own cancellation still ends the loop
        assert task.done() and task.cancelled()
    finally:
        await scheduler.stop()
        await runtime.stop(1)
        await catalog.close()
        pool.close()


async def test_contained_swallows_base_exceptions_but_not_its_own_cancellation() -> None:
    async def unit(exc: BaseException) -> None:
        with contained("unit test", "t"):
            await asyncio.sleep(0)
            raise exc

    for exc in (SystemExit(3), KeyboardInterrupt(), GeneratorExit(), ValueError("x")):
        await unit(exc)  # logged, not raised
    # A CancelledError from something it awaited (not a cancel() of this task) is contained.
    await unit(asyncio.CancelledError())

    started = asyncio.Event()

    async def loop() -> None:
        while True:
            with contained("unit loop"):
                started.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(loop())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tamed_turns_system_exit_of_a_task_into_an_exception() -> None:
    async def exits() -> None:
        raise SystemExit(1)

    # Unwrapped, this task's SystemExit would stop the event loop running the test.
    task = asyncio.ensure_future(tamed(exits))
    with pytest.raises(EscapedError):
        await task


async def test_a_tamed_task_cancelled_before_it_ran_leaves_no_unawaited_coroutine() -> None:
    # Health checks are tamed tasks; a shutdown right after one was scheduled cancelled it
    # before it ran, and the check's coroutine (made beforehand) was never awaited: pytest
    # failed the test that stopped the server with "coroutine ... was never awaited".
    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.ensure_future(tamed(check))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 0  # nothing started, so nothing was left unawaited


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_job_worker_survives_system_exit_of_one_job(backend: Any) -> None:
    # The job task's SystemExit stopped the event loop: now that job fails, the next runs.
    from lakehouse.domain.job_specs import ExpireSnapshotsSpec, JobSpec
    from lakehouse.v1 import job_pb2

    backend.data_dir.mkdir(parents=True, exist_ok=True)
    _table(backend, "a_bad", {})
    _table(backend, "z_good", {})
    pool, catalog, runtime = await _runtime(backend, slots=1)
    try:
        ids = []
        for name in ("a_bad", "z_good"):
            spec = JobSpec(ExpireSnapshotsSpec(namespace="b", table=name, retain_last=1))
            job, _ = await runtime.jobs.create(spec)  # checked while the table is benign
            ids.append(job.id)
        hostile = confine_catalog_io(direct_catalog(backend)).load_table(("b", "a_bad"))
        hostile.transaction().set_properties({"py-io-impl": "sys.exit"}).commit_transaction()
        await runtime.start()
        deadline = time.monotonic() + 60
        states: list[int] = []
        while time.monotonic() < deadline:
            states = [(await runtime.jobs.get(job_id)).state for job_id in ids]
            if all(s not in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING) for s in states):
                break
            await asyncio.sleep(0.05)
        assert states == [job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_SUCCEEDED]
    finally:
        await runtime.stop(1)
        await catalog.close()
        pool.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_rpc_whose_library_code_raises_system_exit_fails_alone(
    server: Any, table_stub: Any, backend: Any
) -> None:
    # Sibling in the RPC handlers: their task ending with SystemExit stopped the server's
    # event loop (RegisterTable of a py-io-impl table did). Now that call is INTERNAL.
    import grpc

    from fixtures.grpc_errors import rpc_error_details
    from lakehouse.v1 import table_service_pb2 as pb

    _table(backend, "hostile", {"py-io-impl": "sys.exit"})
    # The server's catalog as pyiceberg loads it, without the service's confinement.
    server.catalog._catalog = load_catalog(backend.catalog.name, **catalog_properties(backend))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.GetTable(pb.GetTableRequest(namespace="b", table="hostile"))
    assert rpc_error_details(exc.value).code == grpc.StatusCode.INTERNAL
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="b"))
    assert [t.table for t in listed.tables] == ["hostile"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_ingest_committer_survives_system_exit_of_its_table(backend: Any) -> None:
    # The committer task's SystemExit stopped the event loop; now the writes of that commit
    # fail, the committer keeps serving its table, and other tables' committers are untouched.
    from lakehouse.core.ingest import Ingest

    backend.data_dir.mkdir(parents=True, exist_ok=True)
    _table(backend, "a_bad", {"py-io-impl": "sys.exit"})
    _table(backend, "z_good", {})
    pool = BlockingPool(2)
    catalog = UnconfinedCatalog(backend, pool)
    ingest = Ingest(catalog, backend.ingest)
    data = pa.table({"id": pa.array([7], pa.int64())}, schema=SCHEMA.as_arrow())
    try:
        for _ in range(2):  # the same committer answers again: it did not die
            with pytest.raises(EscapedError):
                await asyncio.wait_for(ingest.write("b", "a_bad", data), 30)
        await asyncio.wait_for(ingest.write("b", "z_good", data), 30)
        good = confine_catalog_io(direct_catalog(backend)).load_table(("b", "z_good"))
        assert sorted(good.scan().to_arrow().column("id").to_pylist()) == [0, 1, 7]
    finally:
        await ingest.close()
        await catalog.close()
        pool.close()
