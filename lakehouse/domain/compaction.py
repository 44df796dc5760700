"""Which data files compaction rewrites together, and which count as small."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyiceberg.manifest import DataFile
from pyiceberg.typedef import Record

#: The target size of compaction's files when neither the job nor the table names one.
DEFAULT_TARGET_FILE_BYTES = 512 * 1024 * 1024
#: A group of fewer small files than this is left alone.
DEFAULT_MIN_INPUT_FILES = 2
#: Compaction rewrites the data files smaller than this fraction of the target size.
SMALL_FILE_FRACTION = 0.75


#: The table property that says what counts as a small file (bytes).
SMALL_FILE_BYTES_PROPERTY = "lakehouse.compaction.small-file-size-bytes"
#: The table property of the target data file size (bytes), Iceberg's own.
TARGET_FILE_BYTES_PROPERTY = "write.target-file-size-bytes"


def small_file_bytes(properties: Mapping[str, str]) -> int:
    """Below what size a data file counts as small, by the table's properties.

    ``lakehouse.compaction.small-file-size-bytes`` when set, else ``SMALL_FILE_FRACTION`` of
    ``write.target-file-size-bytes`` (512 MiB when unset). Values that are not positive
    integers are ignored.
    """
    small = positive_property(properties, SMALL_FILE_BYTES_PROPERTY)
    if small is not None:
        return small
    target = positive_property(properties, TARGET_FILE_BYTES_PROPERTY) or DEFAULT_TARGET_FILE_BYTES
    return int(target * SMALL_FILE_FRACTION)


def positive_property(properties: Mapping[str, str], key: str) -> int | None:
    """A table property holding a positive integer; None when unset or anything else."""
    raw = properties.get(key)
    try:
        value = int(raw) if raw is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None


def partition_key(data_file: DataFile) -> tuple[int, tuple[Any, ...]]:
    """What groups files for compaction: the partition spec id and the partition value."""
    partition: Record = data_file.partition
    return data_file.spec_id, tuple(partition[i] for i in range(len(partition)))
