"""Which files a table's metadata references, and deleting files: what maintenance shares.

Every function here blocks (pyiceberg and the object store are synchronous) and is meant to
run in a worker thread. pyiceberg 0.12 only edits metadata when it expires snapshots and has
no compaction or orphan removal, so the file bookkeeping lives here: which files the table's
metadata references is computed by walking manifest lists and manifests, and files are
deleted through the table's own ``FileIO`` (``table.io.delete``), which serves file:// and
s3:// alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pyiceberg.io import FileIO
from pyiceberg.manifest import (
    DataFileContent,
    ManifestEntryStatus,
    ManifestFile,
)
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot

from lakehouse.adapters.iceberg.locations import within_location

logger = logging.getLogger(__name__)

#: Dry runs and results list at most this many paths (the counts stay exact).
MAX_LISTED_FILES = 1_000
#: Deletes run in a few threads: on S3 each one is a round trip.
DELETE_THREADS = 8


# -- Results -----------------------------------------------------------------------------------


# -- Shared helpers ----------------------------------------------------------------------------


@dataclass
class References:
    """The files a set of snapshots references, by kind (normalized URI -> original path).

    ``content_files`` are the data and delete files live in some snapshot of the set (an
    ADDED or EXISTING manifest entry): the files those snapshots read. A file named only by
    DELETED entries (removed by a commit of the set, live only in an older snapshot) is in
    ``mentioned`` instead: it keeps nothing alive, as in Iceberg's reference
    implementation, and once the snapshots where it was live are gone it can be deleted.
    """

    manifest_lists: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    content_files: dict[str, str] = field(default_factory=dict)
    mentioned: dict[str, str] = field(default_factory=dict)
    delete_files: set[str] = field(default_factory=set)
    """Keys (of content files or mentioned ones) that are delete files, not data files."""
    sizes: dict[str, int] = field(default_factory=dict)

    def all_keys(self) -> set[str]:
        """Every path the snapshots need: manifest lists, manifests and live content files."""
        return set(self.manifest_lists) | set(self.manifests) | set(self.content_files)


def normalize_uri(uri: str) -> str:
    """Returns one spelling of a file location, so listed and referenced paths compare equal.

    ``file:/p``, ``file:///p`` and a bare ``/p`` all become ``file:///p`` (with ``.`` and
    duplicate slashes resolved); ``s3a://`` and ``s3n://`` become ``s3://``. Percent escapes
    are decoded on local paths only, since S3 keys may hold a literal ``%``.

    Args:
        uri: A location as metadata stores it or as a listing returns it.

    Returns:
        The normalized location.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = unquote(parts.path) if scheme == "file" else uri
        # A Windows drive letter is not a concern here; paths are POSIX.
        return "file://" + os.path.normpath("/" + path.lstrip("/"))
    if scheme in ("s3a", "s3n"):
        scheme = "s3"
    key = parts.path
    return f"{scheme}://{parts.netloc}{key}"


#: What one manifest says of one content file: path, size, whether it is a delete file, and
#: whether the entry is live (ADDED or EXISTING) rather than DELETED.
ManifestFacts = list[tuple[str, int, bool, bool]]


def collect_references(
    snapshots: Iterable[Snapshot],
    io: FileIO,
    manifest_cache: dict[str, ManifestFacts],
) -> References:
    """Walks each snapshot's manifest list and manifests; manifests are read once per call site.

    A content file is referenced when an entry of one of the snapshots' manifests has it live
    (ADDED or EXISTING); DELETED entries only mention it (see ``References``). Any read error
    propagates: a partial reference set must never drive a delete.
    """
    refs = References()
    for snapshot in snapshots:
        refs.manifest_lists[normalize_uri(snapshot.manifest_list)] = snapshot.manifest_list
        manifests: list[ManifestFile] = snapshot.manifests(io)
        for manifest in manifests:
            key = normalize_uri(manifest.manifest_path)
            refs.manifests[key] = manifest.manifest_path
            refs.sizes[key] = manifest.manifest_length
            if key not in manifest_cache:
                manifest_cache[key] = [
                    (
                        entry.data_file.file_path,
                        entry.data_file.file_size_in_bytes,
                        entry.data_file.content != DataFileContent.DATA,
                        entry.status != ManifestEntryStatus.DELETED,
                    )
                    for entry in manifest.fetch_manifest_entry(io, discard_deleted=False)
                ]
            for path, size, is_delete_file, live in manifest_cache[key]:
                file_key = normalize_uri(path)
                if live:
                    refs.content_files[file_key] = path
                else:
                    refs.mentioned[file_key] = path
                if is_delete_file:
                    refs.delete_files.add(file_key)
                refs.sizes[file_key] = size
    for file_key in refs.content_files:
        refs.mentioned.pop(file_key, None)
    return refs


def metadata_files(metadata: TableMetadata, metadata_location: str | None) -> dict[str, str]:
    """The current metadata file, the ones in its log, and the statistics files it names."""
    paths = [entry.metadata_file for entry in metadata.metadata_log]
    if metadata_location:
        paths.append(metadata_location)
    paths.extend(stats.statistics_path for stats in metadata.statistics)
    paths.extend(stats.statistics_path for stats in metadata.partition_statistics)
    return {normalize_uri(p): p for p in paths}


def delete_all(io: FileIO, paths: Iterable[str]) -> tuple[int, int]:
    """Deletes each path; returns (deleted, failed).

    A missing file counts as deleted, so a retried job converges. Other failures are logged
    and counted, not raised: the files are unreferenced already, so nothing is left broken
    and orphan removal will take them later.
    """

    def one(path: str) -> bool:
        try:
            io.delete(path)
        except FileNotFoundError:
            return True
        except Exception:
            logger.warning("could not delete %s", path, exc_info=True)
            return False
        return True

    todo = list(paths)
    if not todo:
        return 0, 0
    with ThreadPoolExecutor(max_workers=min(DELETE_THREADS, len(todo))) as pool:
        outcomes = list(pool.map(one, todo))
    deleted = sum(outcomes)
    return deleted, len(outcomes) - deleted


def inside_table(table: Table, paths: Sequence[str]) -> list[str]:
    """The paths under the table's own folder; the others are left, and logged.

    A table registered before RegisterTable checked where its files are may reference files
    of another table or outside the warehouse: expiring its snapshots must not delete them.
    """
    location = table.location()
    inside = [p for p in paths if within_location(p, location)]
    if len(inside) < len(paths):
        logger.warning(
            "left %d expired files outside the folder of table %s",
            len(paths) - len(inside),
            ".".join(table.name()),
        )
    return inside


def capped(paths: Iterable[str]) -> tuple[str, ...]:
    """At most ``MAX_LISTED_FILES`` of ``paths``, for a result to list."""
    out: list[str] = []
    for path in paths:
        if len(out) >= MAX_LISTED_FILES:
            break
        out.append(path)
    return tuple(out)


# -- expire_snapshots --------------------------------------------------------------------------


# -- remove_orphan_files -----------------------------------------------------------------------


# -- compact_table -----------------------------------------------------------------------------
