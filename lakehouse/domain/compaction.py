"""Which data files compaction rewrites together, and which count as small."""

from __future__ import annotations

from typing import Any

from pyiceberg.manifest import DataFile
from pyiceberg.typedef import Record

#: Compaction rewrites the data files smaller than this fraction of the target size.
SMALL_FILE_FRACTION = 0.75


def partition_key(data_file: DataFile) -> tuple[int, tuple[Any, ...]]:
    """What groups files for compaction: the partition spec id and the partition value."""
    partition: Record = data_file.partition
    return data_file.spec_id, tuple(partition[i] for i in range(len(partition)))
