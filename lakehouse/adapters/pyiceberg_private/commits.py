"""Commits pyiceberg's public API cannot make, through its private transaction internals.

Requirements and raw updates added to a transaction, the ``replace`` producer compaction
commits its rewrites with, and a transaction that does not copy the table's metadata on every
look at it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pyiceberg.catalog import Catalog, MetastoreCatalog
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.manifest import (
    DataFileContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
)
from pyiceberg.table import StagedTable, Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update import (
    TableRequirement,
    TableUpdate,
    _apply_table_update,
    _TableMetadataUpdateContext,
    _update_table_metadata_log,
)
from pyiceberg.table.update.snapshot import CommitWindow, _OverwriteFiles
from pyiceberg.typedef import EMPTY_DICT, Identifier, KeyDefaultDict
from pyiceberg.utils.concurrent import ExecutorFactory
from pyiceberg.utils.datetime import datetime_to_millis

from lakehouse.adapters.pyiceberg_private.io import confined_location_provider


def updated_metadata(
    base: TableMetadata, updates: tuple[TableUpdate, ...], metadata_location: str | None = None
) -> TableMetadata:
    """``update_table_metadata(base, updates)`` without its closing deep copy.

    pyiceberg 0.12 ends every metadata update with ``model_copy(deep=True)`` of the result,
    which copies every snapshot, schema and log entry of the table: on a table of 1,000
    snapshots a group commit of 32x100 rows spent ~1.0 s of its ~1.4 s of CPU in these copies
    (yappi, CPU clock). The metadata models are frozen and each update builds new
    containers (``base.snapshots + [snapshot]``), so the result may share what it did not
    change with ``base``. The private parts are ``_apply_table_update`` and
    ``_TableMetadataUpdateContext`` (and ``_update_table_metadata_log`` with a
    ``metadata_location``, as a catalog's commit passes); the contract test checks the result
    equals pyiceberg's.
    """
    if not updates:
        return base
    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes():
        if metadata_location:
            metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
        if base.last_updated_ms == metadata.last_updated_ms:
            now = datetime_to_millis(datetime.now().astimezone())
            metadata = metadata.model_copy(update={"last_updated_ms": now})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


def cheap_commits(catalog: Catalog) -> Catalog:
    """Makes ``catalog``'s commits to existing tables skip pyiceberg's deep metadata copy.

    pyiceberg's catalogs that commit themselves (the SQL catalog) stage the new metadata with
    ``self._update_and_stage_table``, whose ``update_table_metadata`` deep-copies the whole
    result (see ``updated_metadata``): a third of a 100-row group commit's CPU on a table of
    100 snapshots. This instance's version stages an existing table's metadata with
    ``updated_metadata``; a table being created (validated by pyiceberg) goes the usual way.
    A REST catalog commits on its server and never calls it. Its contract test is in
    ``tests/adapters/test_pyiceberg_private_contract.py``.

    Returns:
        The same catalog, for chaining.
    """
    if not isinstance(catalog, MetastoreCatalog):
        return catalog
    metastore = catalog
    original = metastore._update_and_stage_table

    def _update_and_stage_table(
        current_table: Table | None,
        table_identifier: Identifier,
        requirements: tuple[TableRequirement, ...],
        updates: tuple[TableUpdate, ...],
    ) -> StagedTable:
        if current_table is None:
            return original(current_table, table_identifier, requirements, updates)
        for requirement in requirements:
            requirement.validate(current_table.metadata)
        metadata = updated_metadata(
            current_table.metadata, updates, current_table.metadata_location
        )
        version = metastore._parse_metadata_version(current_table.metadata_location) + 1
        # The service's confined provider: a table's properties never choose where (io.py).
        provider = confined_location_provider(metadata.location, metadata.properties)
        location = provider.new_table_metadata_file_location(version)
        return StagedTable(
            identifier=table_identifier,
            metadata=metadata,
            metadata_location=location,
            io=metastore._load_file_io(properties=metadata.properties, location=location),
            catalog=metastore,
        )

    # An instance attribute shadows the method for this catalog only.
    metastore._update_and_stage_table = _update_and_stage_table  # type: ignore[method-assign]
    return catalog


class _MemoizedTransaction(Transaction):
    """A transaction whose ``table_metadata`` is computed once per state of its updates.

    pyiceberg 0.12 computes ``Transaction.table_metadata`` anew on every access: it applies
    the staged updates to the table's metadata and returns a deep copy of the result. A commit
    reads it some 30 times (its producer's schema, spec, snapshot id, manifests...), and the
    metadata holds every snapshot of the table, so the copies cost more than the commit's own
    work and grow with the table's history (70 overwrites of one table: 0.08 s to 0.19 s each;
    the copies were half the commit's CPU). The metadata models are frozen, so one result is
    shared until an update is staged (``_apply`` replaces the ``_updates`` tuple) or the table
    is refreshed; and it is computed without pyiceberg's closing deep copy (``updated_metadata``).
    """

    _memo: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        memo = self._memo
        if memo is not None and memo[0] is base and memo[1] is updates:
            return memo[2]
        metadata = updated_metadata(base, updates)
        self._memo = (base, updates, metadata)
        return metadata


def transaction(table: Table) -> Transaction:
    """``table.transaction()``, with its metadata computed once per staged change.

    See ``_MemoizedTransaction``. The private part is ``Transaction``'s ``_table`` and
    ``_updates``, checked by the contract tests.
    """
    return _MemoizedTransaction(table)


#: What pyiceberg 0.12's metadata update says (a ``ValueError``, raised before the catalog
#: writes anything) when a new snapshot was numbered on metadata older than the catalog's.
_STALE_SEQUENCE_NUMBER = "older than last sequence number"


def is_stale_sequence_number(exc: ValueError) -> bool:
    """Whether pyiceberg refused a snapshot whose sequence number came from stale metadata.

    A commit to a branch asserts only that branch's head, so it can pass the catalog's
    requirement check after another branch moved; pyiceberg then refuses the snapshot's
    sequence number with a ``ValueError`` whose only mark is its text (no exception type of
    its own), which the contract test pins.
    """
    return _STALE_SEQUENCE_NUMBER in str(exc)


def add_commit_requirements(tx: Transaction, *requirements: TableRequirement) -> None:
    """Makes ``tx``'s commit require ``requirements`` of the table as the catalog has it.

    pyiceberg's public API offers no way to add a requirement to a transaction; its private
    ``Transaction._apply`` with no updates checks them against the transaction's metadata at
    once and sends them with the commit, where the catalog refuses the commit (pyiceberg's
    ``CommitFailedException``) unless they hold. Its contract tests are in
    ``tests/adapters/test_pyiceberg_private_imports.py``.

    Args:
        tx: The open transaction.
        *requirements: What must hold at commit, e.g. ``AssertCurrentSchemaId``.

    Raises:
        CommitFailedException: A requirement does not hold for ``tx``'s own metadata.
    """
    tx._apply((), requirements)


def apply_updates(
    tx: Transaction, updates: tuple[TableUpdate, ...], *requirements: TableRequirement
) -> None:
    """Stages raw metadata ``updates`` in ``tx``, committed only if ``requirements`` hold.

    For changes pyiceberg's public update builders cannot express (dropping the sort order
    back to unsorted). The same private ``Transaction._apply`` as ``add_commit_requirements``.
    """
    tx._apply(updates, requirements)


class ReplaceFiles(_OverwriteFiles):
    """An overwrite that commits as Iceberg's ``replace`` operation (a rewrite of files).

    pyiceberg 0.12 has no rewrite producer: its summary code accepts only append,
    overwrite and delete, so the summary is built as an overwrite and relabelled. Readers
    and engines treat ``replace`` as "same data, new files" (incremental reads skip it).

    Row-level changes commit through it too, labelled ``overwrite`` or ``delete`` (``label``),
    for its manifest cache and its handling of unpartitioned specs.

    Manifests are immutable, so their entries are read once per compaction (``entries``,
    shared by the producers of every commit attempt): a retry after a lost commit race then
    reads only the manifests committed since, instead of every manifest of the table, which
    keeps each retry short enough to win against a steady stream of appends.
    """

    def __init__(
        self,
        *args: Any,
        entries: dict[str, list[ManifestEntry]] | None = None,
        label: Operation = Operation.REPLACE,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._entries: dict[str, list[ManifestEntry]] = {} if entries is None else entries
        self._label = label

    def _live_entries(self, manifest: ManifestFile) -> list[ManifestEntry]:
        entries = self._entries.get(manifest.manifest_path)
        if entries is None:
            entries = manifest.fetch_manifest_entry(self._io, discard_deleted=True)
            self._entries[manifest.manifest_path] = entries
        return entries

    def _existing_manifests(self) -> list[ManifestFile]:
        """As pyiceberg's ``_OverwriteFiles._existing_manifests``, through the cache."""
        existing: list[ManifestFile] = []
        evaluators: dict[int, Callable[[ManifestFile], bool]] = KeyDefaultDict(
            self._build_manifest_evaluator
        )
        snapshot = self._transaction.table_metadata.snapshot_by_name(name=self._target_branch)
        if snapshot is None:
            return existing
        for manifest in snapshot.manifests(io=self._io):
            if not evaluators[manifest.partition_spec_id](manifest):
                existing.append(manifest)
                continue
            entries = self._live_entries(manifest)
            kept = [e for e in entries if e.data_file not in self._deleted_data_files]
            if len(kept) == len(entries):
                existing.append(manifest)
                continue
            if not kept:
                continue
            with self.new_manifest_writer(self.spec(manifest.partition_spec_id)) as writer:
                for entry in kept:
                    writer.add_entry(
                        ManifestEntry.from_args(
                            status=ManifestEntryStatus.EXISTING,
                            snapshot_id=entry.snapshot_id,
                            sequence_number=entry.sequence_number,
                            file_sequence_number=entry.file_sequence_number,
                            data_file=entry.data_file,
                        )
                    )
            existing.append(writer.to_manifest_file())
        return existing

    def _deleted_entries(self) -> list[ManifestEntry]:
        """As pyiceberg's ``_OverwriteFiles._deleted_entries``, through the cache."""
        deleted: list[ManifestEntry] = []
        if self._parent_snapshot_id is not None:
            parent = self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id)
            if parent is None:
                raise ValueError(f"no previous snapshot {self._parent_snapshot_id}")
            evaluators: dict[int, Callable[[ManifestFile], bool]] = KeyDefaultDict(
                self._build_manifest_evaluator
            )
            manifests = [
                m for m in parent.manifests(self._io) if evaluators[m.partition_spec_id](m)
            ]
            # Read in parallel (on S3 each manifest not cached yet is a round trip).
            read = ExecutorFactory.get_or_create().map(self._live_entries, manifests)
            deleted = [
                ManifestEntry.from_args(
                    status=ManifestEntryStatus.DELETED,
                    snapshot_id=self._snapshot_id,
                    sequence_number=entry.sequence_number,
                    file_sequence_number=entry.file_sequence_number,
                    data_file=entry.data_file,
                )
                for entries in read
                for entry in entries
                if entry.data_file.content == DataFileContent.DATA
                and entry.data_file in self._deleted_data_files
            ]
        self._validate_required_deletes(deleted)
        return deleted

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        summary = super()._summary(snapshot_properties)
        return Summary(self._label, **summary.additional_properties)

    def _build_delete_files_partition_predicate(self) -> None:
        super()._build_delete_files_partition_predicate()
        # For an unpartitioned spec pyiceberg builds AlwaysFalse (no partition field to
        # match), which would prune every manifest and miss the files to delete.
        # One lookup per spec id, not per file: each ``spec()`` call deep-copies the whole
        # table metadata (found by the fault suite: with a few dozen files on a table of a few
        # hundred snapshots this took seconds per commit attempt, so under steady ingest the
        # replace lost every commit race and the job failed).
        for spec_id in {data_file.spec_id for data_file in self._deleted_data_files}:
            if self.spec(spec_id).is_unpartitioned():
                self.partition_filters[spec_id] = AlwaysTrue()

    def _validate_concurrency(self) -> None:
        """A rewrite conflicts only with changes to the files it replaces (as Java's RewriteFiles).

        Concurrent appends are fine: their files are not touched. A file already removed, or
        a new delete file against one of ours, fails the commit.
        """
        from pyiceberg.table.update.validate import (
            _validate_data_files_exist,
            _validate_no_new_deletes_for_data_files,
        )

        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        table = self._transaction._table
        _validate_data_files_exist(table, window.head, self._deleted_data_files, window.base)
        _validate_no_new_deletes_for_data_files(
            table, window.head, None, self._deleted_data_files, window.base
        )

    def validate_since(
        self, metadata: TableMetadata, read_at: int, branch: str = MAIN_BRANCH
    ) -> None:
        """Checks the commits to ``branch`` since snapshot ``read_at`` against this rewrite.

        As if pyiceberg had retried from ``read_at`` all along (its retries keep that base):
        the producer's private starting snapshot and commit window are set to it.

        Raises:
            ValidationException: A replaced file was removed or gained a delete file.
        """
        self._starting_snapshot_id = read_at
        self._commit_window = CommitWindow.resolve(metadata, read_at, branch)
        self._validate_concurrency()
