"""Which table properties a client may set, and which values the writers can use.

Table properties are an allow-list: Iceberg's format, data-file, commit and history
properties, minus anything that names a path, a class or an endpoint, plus ``lakehouse.*``
policy keys and plainly user-owned keys (docs/threat-model.md). Values are checked too: a
writer value pyiceberg cannot use would fail every write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pyarrow as pa
from pyiceberg.avro.codecs import CODEC_MAPPING_ICEBERG_TO_AVRO, KNOWN_CODECS
from pyiceberg.io.pyarrow import match_metrics_mode
from pyiceberg.table import TableProperties
from pyiceberg.types import strtobool

# Properties that belong to the table format, not to users: changing them through
# properties would corrupt the table or silently do nothing.
RESERVED_PROPERTIES = frozenset({"format-version", "uuid", "location", "current-snapshot-id"})


def _typed_pyiceberg_properties(kind: type) -> frozenset[str]:
    """Pyiceberg's table properties whose default is of ``kind`` (it parses them as such)."""
    names = set()
    for attribute in dir(TableProperties):
        default = getattr(TableProperties, attribute + "_DEFAULT", None)
        if not attribute.endswith("_DEFAULT") and type(default) is kind:
            names.add(str(getattr(TableProperties, attribute)))
    return frozenset(names)


#: Properties that hold counts, sizes or milliseconds (maintenance policies among them, and
#: every integer property pyiceberg reads): a typo is refused when set rather than ignored by
#: the scheduler later, or failing every write (pyiceberg parses them on each one).
COUNT_PROPERTIES = frozenset(
    {
        "history.expire.max-snapshot-age-ms",
        "history.expire.min-snapshots-to-keep",
        "write.target-file-size-bytes",
        "lakehouse.compaction.min-input-files",
        "lakehouse.compaction.small-file-size-bytes",
        "lakehouse.orphans.min-file-age-ms",
        "lakehouse.orphans.interval-ms",
    }
) | _typed_pyiceberg_properties(int)
#: Switches pyiceberg reads (``write.object-storage.enabled``...): a value it cannot parse
#: made table creation and every later write fail (found by the fuzz test, as INTERNAL).
BOOLEAN_PROPERTIES = _typed_pyiceberg_properties(bool)
#: Table properties a client may set: Iceberg's own properties that shape the format, the
#: layout of data files, commits and history (from the Iceberg spec's table-properties page
#: and pyiceberg's ``TableProperties``). Left out on purpose, so refused: anything that names
#: a path (``write.data.path``, ``write.metadata.path``, ``write.object-storage.path``,
#: ``write.folder-storage.path``), a class (``write.py-location-provider.impl``,
#: ``write.location-provider.impl``, ``py-io-impl``, ``io-impl``) or storage settings
#: (``s3.*``, ``gcs.*``, ``adls.*``, ``hf.*``, ``client.*``): pyiceberg merges table
#: properties into its FileIO and location provider, so they would let a client redirect or
#: crash the server. Also left out: ``schema.name-mapping.default`` (set by imports; a bad
#: one breaks every read) and the format's own keys (``RESERVED_PROPERTIES``).
ICEBERG_PROPERTIES = frozenset(
    {
        "format-version",  # at create only, see RESERVED_PROPERTIES
        "write.format.default",
        "write.delete.format.default",
        "write.target-file-size-bytes",
        "write.delete.target-file-size-bytes",
        "write.avro.compression-codec",
        "write.avro.compression-level",
        "write.distribution-mode",
        "write.delete.distribution-mode",
        "write.update.distribution-mode",
        "write.merge.distribution-mode",
        "write.delete.mode",
        "write.update.mode",
        "write.merge.mode",
        "write.delete.isolation-level",
        "write.update.isolation-level",
        "write.merge.isolation-level",
        "write.metadata.metrics.default",
        "write.metadata.metrics.max-inferred-column-defaults",
        "write.metadata.compression-codec",
        "write.metadata.previous-versions-max",
        "write.metadata.delete-after-commit.enabled",
        "write.summary.partition-limit",
        "write.object-storage.enabled",
        "write.object-storage.partitioned-paths",
        "write.wap.enabled",
        "commit.retry.num-retries",
        "commit.retry.min-wait-ms",
        "commit.retry.max-wait-ms",
        "commit.retry.total-timeout-ms",
        "commit.status-check.num-retries",
        "commit.status-check.min-wait-ms",
        "commit.status-check.max-wait-ms",
        "commit.status-check.total-timeout-ms",
        "commit.manifest.target-size-bytes",
        "commit.manifest.min-count-to-merge",
        "commit.manifest-merge.enabled",
        "history.expire.max-snapshot-age-ms",
        "history.expire.min-snapshots-to-keep",
        "history.expire.max-ref-age-ms",
        "gc.enabled",
    }
)
#: Prefixes of Iceberg property families a client may set (per-column metrics modes and
#: bloom filters, Parquet and ORC writer tuning, read split planning): none of their keys
#: names a path, a class or an endpoint.
ICEBERG_PROPERTY_PREFIXES = (
    "write.parquet.",
    "write.orc.",
    "write.metadata.metrics.column.",
    "read.split.",
    "read.parquet.vectorization.",
)
#: The service's own policy keys (maintenance, ingest; typed below). Other ``lakehouse.*``
#: keys are the service's bookkeeping (``lakehouse.job-id`` marks a SQL job's destination
#: table) and are refused, so a client cannot forge them. Kept in step with
#: ``core.maintenance_scheduler.POLICY_PROPERTIES`` and ``core.dead_letters`` by a test.
SERVICE_PROPERTY_PREFIX = "lakehouse."
SERVICE_POLICY_PROPERTIES = frozenset(
    {
        "lakehouse.ingest.invalid-row-policy",
        "lakehouse.compaction.min-input-files",
        "lakehouse.compaction.small-file-size-bytes",
        "lakehouse.orphans.min-file-age-ms",
        "lakehouse.orphans.interval-ms",
    }
)
#: Keys that belong to the table's users and mean nothing to any engine: the two that Spark,
#: Trino and Hive write themselves (``comment``, ``owner``), and anything under ``user.``
#: for the rest (teams, tags, contacts), so a user's key can never collide with one a later
#: Iceberg or pyiceberg release starts to read.
USER_PROPERTIES = frozenset({"comment", "owner"})
USER_PROPERTY_PREFIX = "user."
#: Properties with a fixed set of values pyiceberg understands: anything else failed every
#: later write.
ENUM_PROPERTIES = {
    "write.format.default": frozenset({"parquet"}),
    "write.delete.mode": frozenset({"copy-on-write", "merge-on-read"}),
    # pyiceberg passes it to pyarrow's Parquet writer ("uncompressed" as "none"): an unknown
    # codec failed every later write with INTERNAL.
    TableProperties.PARQUET_COMPRESSION: frozenset(
        {"zstd", "snappy", "gzip", "lz4", "brotli", "uncompressed", "none"}
    ),
    # The codecs pyiceberg's manifest writer knows, by their Avro or their Iceberg names.
    TableProperties.WRITE_AVRO_COMPRESSION: frozenset(KNOWN_CODECS)
    | frozenset(CODEC_MAPPING_ICEBERG_TO_AVRO),
}
#: Row and byte counts pyarrow's Parquet writer takes as they are: 0 made it loop forever on
#: every write (``page-row-limit``), pinning a catalog thread each, or fail every write.
#: pyarrow reads them as 32- or 64-bit integers; the cap keeps them within either.
POSITIVE_PROPERTIES = frozenset(
    {
        TableProperties.PARQUET_PAGE_ROW_LIMIT,
        TableProperties.PARQUET_ROW_GROUP_LIMIT,
        TableProperties.PARQUET_PAGE_SIZE_BYTES,
        TableProperties.PARQUET_DICT_SIZE_BYTES,
    }
)
MAX_POSITIVE_PROPERTY = 2**31 - 1
#: The largest count (Iceberg reads them as Java longs; pyarrow as C longs).
MAX_COUNT_PROPERTY = 2**63 - 1
#: Metrics modes (``none``, ``counts``, ``full``, ``truncate(N)``) pyiceberg parses on every
#: write: a bad one failed them all.
METRICS_MODE_PROPERTY = TableProperties.DEFAULT_WRITE_METRICS_MODE
METRICS_MODE_PREFIX = TableProperties.METRICS_MODE_COLUMN_CONF_PREFIX + "."
#: Table format versions pyiceberg creates and writes.
FORMAT_VERSIONS = frozenset({"1", "2"})
#: The Parquet codecs that take a compression level, with the levels pyarrow accepts for each
#: (its ``Codec.minimum/maximum_compression_level``); the others take none.
_LEVELLED_CODECS = {
    codec: (pa.Codec.minimum_compression_level(codec), pa.Codec.maximum_compression_level(codec))
    for codec in ("zstd", "gzip", "lz4", "brotli")
}
#: An optionally signed whole number short enough for int() (zstd's levels go below zero).
_LEVEL_TEXT = re.compile(r"-?[0-9]{1,7}")


def is_settable_property(key: str) -> bool:
    """Whether a client may set table property ``key`` (see ``ICEBERG_PROPERTIES``)."""
    return (
        key in ICEBERG_PROPERTIES
        or key.startswith(ICEBERG_PROPERTY_PREFIXES)
        or key in SERVICE_POLICY_PROPERTIES
        or key in USER_PROPERTIES
        or key.startswith(USER_PROPERTY_PREFIX)
    )


def table_property_problem(
    properties: Mapping[str, str], *, creating: bool
) -> tuple[str, str] | None:
    """Why client-given table properties cannot be set, or None if they can.

    Args:
        properties: The properties to set.
        creating: Whether they come with a new table, which may choose its format version.

    Returns:
        The offending key and the reason, or None.
    """
    # A new table may choose its format version; changing it later would do nothing.
    reserved = RESERVED_PROPERTIES - {"format-version"} if creating else RESERVED_PROPERTIES
    for name in sorted(properties):
        if name in reserved:
            return name, f"property {name!r} is managed by the table format"
        if not is_settable_property(name):
            return name, (
                f"property {name[:64]!r} is not one a client may set: use an Iceberg table "
                f"property, a {SERVICE_PROPERTY_PREFIX}* policy key, 'comment', 'owner' or a "
                f"{USER_PROPERTY_PREFIX}* key (keys naming paths, classes or storage "
                "settings are refused)"
            )
    problem = property_value_problem(properties)
    if problem is not None:
        return problem
    version = properties.get("format-version")
    if version is not None and version not in FORMAT_VERSIONS:
        return (
            "format-version",
            f"format-version must be one of {sorted(FORMAT_VERSIONS)}, not {version!r}",
        )
    return None


def property_value_problem(properties: Mapping[str, str]) -> tuple[str, str] | None:
    """Why a value among ``properties`` would break pyiceberg's readers or writers, or None.

    Only the values of keys pyiceberg reads are checked, whoever set them: RegisterTable
    applies it to the properties a table arrives with (which may hold keys no client may set).

    Args:
        properties: A table's properties (all of them, so the compression level is checked
            against the codec the table writes with).

    Returns:
        The offending key and the reason, or None.
    """
    for name in sorted(set(properties) & COUNT_PROPERTIES):
        value = properties[name]
        if not (value.isascii() and value.isdigit()):
            return name, f"{name} must be a whole number, not {value[:64]!r}"
        # The length first: int() of a string of thousands of digits raises. Past a 64-bit
        # integer the writers fail (target-file-size-bytes overflowed pyarrow: INTERNAL).
        if len(value) > len(str(MAX_COUNT_PROPERTY)) or int(value) > MAX_COUNT_PROPERTY:
            return name, f"{name} must be a whole number up to {MAX_COUNT_PROPERTY}"
    for name in sorted(set(properties) & BOOLEAN_PROPERTIES):
        try:
            strtobool(properties[name])
        except ValueError:
            return name, f"{name} must be true or false, not {properties[name][:64]!r}"
    for name in sorted(set(properties) & set(ENUM_PROPERTIES)):
        if properties[name] not in ENUM_PROPERTIES[name]:
            return name, f"{name} must be one of {sorted(ENUM_PROPERTIES[name])}"
    for name in sorted(set(properties) & POSITIVE_PROPERTIES):
        # Whole numbers already (COUNT_PROPERTIES); a 0 is what the writer cannot take.
        value = properties[name]
        # The length first: int() of a string of thousands of digits raises.
        if len(value) > len(str(MAX_POSITIVE_PROPERTY)) or not 1 <= int(value) <= (
            MAX_POSITIVE_PROPERTY
        ):
            return name, f"{name} must be from 1 to {MAX_POSITIVE_PROPERTY}"
    for name in sorted(properties):
        if name == METRICS_MODE_PROPERTY or name.startswith(METRICS_MODE_PREFIX):
            try:
                match_metrics_mode(properties[name])
            except ValueError:
                return name, (
                    f"{name[:64]} must be none, counts, full or truncate(N) with N from 1, "
                    f"not {properties[name][:64]!r}"
                )
    return compression_level_problem(properties)


def compression_level_problem(properties: Mapping[str, str]) -> tuple[str, str] | None:
    """Why the Parquet compression level cannot go with the codec, or None.

    pyarrow takes a level only within its codec's range: ``gzip`` with level 99 failed every
    write with an OSError (reported as the object store failing, and retried), ``snappy`` or
    ``uncompressed`` with any level with ArrowInvalid (INTERNAL).

    Args:
        properties: The table's properties after a change: the level is checked against the
            codec they name, or pyiceberg's default codec.

    Returns:
        The level's key and the reason, or None.
    """
    level_key = TableProperties.PARQUET_COMPRESSION_LEVEL
    text = properties.get(level_key)
    if text is None:
        return None
    codec = properties.get(
        TableProperties.PARQUET_COMPRESSION, TableProperties.PARQUET_COMPRESSION_DEFAULT
    )
    # The pattern bounds the length: int() of a string of thousands of digits raises.
    if not _LEVEL_TEXT.fullmatch(text):
        return level_key, f"{level_key} must be a whole number, not {text[:64]!r}"
    if codec not in _LEVELLED_CODECS:
        return level_key, (
            f"{level_key} cannot be set with {TableProperties.PARQUET_COMPRESSION} "
            f"{codec[:64]!r}: that codec takes no level"
        )
    low, high = _LEVELLED_CODECS[codec]
    if not low <= int(text) <= high:
        return level_key, f"{level_key} for {codec} must be from {low} to {high}, not {text}"
    return None
