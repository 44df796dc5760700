"""Data files handed between replicas: a written ``DataFile`` to bytes and back.

A replica that is not its table's commit owner writes its rows' Parquet files itself and
hands their ``DataFile`` metadata to the owner through the shared database
(``lakehouse.adapters.ingest_fleet_store``). pyiceberg has no public serialization of one
``DataFile`` outside a manifest, and rebuilding it from the Parquet footer
(``parquet_file_to_data_file``) refuses files that carry field ids, which every file written
by a table does. So the fields are copied out through ``DataFile``'s public properties into
plain values, pickled, and read back with an unpickler that only builds plain values
(containers, numbers, strings, bytes, dates, decimals, uuids): the bytes come from the
service's own database, and even so nothing else can be instantiated from them.
"""

from __future__ import annotations

import datetime
import decimal
import io
import pickle
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.typedef import Record

# The fields of a data file, in DataFile's order; all read through public properties.
_FIELDS: Final = (
    "content",
    "file_path",
    "file_format",
    "partition",
    "record_count",
    "file_size_in_bytes",
    "column_sizes",
    "value_counts",
    "null_value_counts",
    "nan_value_counts",
    "lower_bounds",
    "upper_bounds",
    "key_metadata",
    "split_offsets",
    "equality_ids",
    "sort_order_id",
)
# Classes the unpickler may build: the plain values partition tuples and bounds hold.
_ALLOWED: Final = {
    ("datetime", "date"): datetime.date,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("decimal", "Decimal"): decimal.Decimal,
    ("uuid", "UUID"): uuid.UUID,
}


def _plain(data_file: DataFile, spec_id: int) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(data_file, name) for name in _FIELDS}
    for name, value in values.items():
        # A file read from a manifest holds pyiceberg's LazyDict, which the unpickler refuses.
        if isinstance(value, Mapping):
            values[name] = dict(value)
    values["content"] = int(values["content"])
    values["file_format"] = values["file_format"].name
    partition = values["partition"]
    values["partition"] = [partition[i] for i in range(len(partition))]
    values["spec_id"] = spec_id
    return values


def dump_data_files(files: Sequence[DataFile], spec_id: int) -> bytes:
    """The metadata of files written in partition spec ``spec_id``, for :func:`load_data_files`.

    The spec is given, not read from the files: the writer leaves it to the manifest.
    """
    return pickle.dumps([_plain(f, spec_id) for f in files], protocol=pickle.HIGHEST_PROTOCOL)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")
        return allowed


def load_data_files(raw: bytes) -> list[DataFile]:
    """The data files :func:`dump_data_files` wrote.

    Raises:
        pickle.UnpicklingError: ``raw`` holds something else than plain values.
    """
    files = []
    for values in _PlainUnpickler(io.BytesIO(raw)).load():
        spec_id = values.pop("spec_id")
        values["content"] = DataFileContent(values["content"])
        values["file_format"] = FileFormat[values["file_format"]]
        values["partition"] = Record(*values["partition"])
        data_file = DataFile.from_args(**values)
        data_file.spec_id = spec_id
        files.append(data_file)
    return files
