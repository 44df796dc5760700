"""Which data files compaction rewrites together, and which count as small."""

from __future__ import annotations

from typing import Any

from pyiceberg.manifest import DataFile
from pyiceberg.typedef import Record

#: The target size of compaction's files when neither the job nor the table names one.
DEFAULT_TARGET_FILE_BYTES = 512 * 1024 * 1024
#: A group of fewer small files than this is left alone.
DEFAULT_MIN_INPUT_FILES = 2
#: Compaction rewrites the data files smaller than this fraction of the target size.
SMALL_FILE_FRACTION = 0.75


def partition_key(data_file: DataFile) -> tuple[int, tuple[Any, ...]]:
    """What groups files for compaction: the partition spec id and the partition value."""
    partition: Record = data_file.partition
    return data_file.spec_id, tuple(partition[i] for i in range(len(partition)))
