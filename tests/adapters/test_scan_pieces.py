"""How a read cuts decoded batches into pieces, and what each piece holds."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.adapters.iceberg import scan


def _dictionary_batch(values: list[str], indices: pa.Array) -> pa.RecordBatch:
    column = pa.DictionaryArray.from_arrays(indices, pa.array(values))
    return pa.record_batch({"id": pa.array(range(len(indices)), pa.int64()), "tag": column})


def test_pieces_hold_every_row_once_in_the_target_types() -> None:
    indices = pa.array([i % 3 for i in range(200_000)], pa.int32())
    batch = _dictionary_batch(["eu-west", "us-east", "apac"], indices)
    target = pa.schema([("id", pa.int64()), ("tag", pa.string())])

    pieces = list(scan._decoded_pieces(iter([batch]), target))

    assert all(p.schema == target for p in pieces)
    table = pa.Table.from_batches(pieces, target)
    assert table.column("id").to_pylist() == list(range(200_000))
    expected = pc.take(pa.array(["eu-west", "us-east", "apac"]), indices)
    assert table.column("tag").combine_chunks().equals(expected)


def test_a_long_value_in_a_dictionary_of_short_ones_does_not_shred_the_batch() -> None:
    # One 1 MiB value that a single row uses: the cheap bound (longest value x rows) would
    # cut 200,000 rows into pieces of 2 rows; the exact size keeps them about PIECE_BYTES.
    rows = 200_000
    indices = pa.array([1 if i == 0 else 0 for i in range(rows)], pa.int32())
    batch = _dictionary_batch(["short", "x" * (1024 * 1024)], indices)

    piece_rows = scan._piece_rows(batch)

    exact = scan._decoded_size(batch, exact=True)
    assert piece_rows == rows * scan.PIECE_BYTES // exact
    assert piece_rows > 1000


def test_pieces_of_wide_dictionary_values_stay_near_the_piece_size() -> None:
    # Every row uses a 1 KiB value: each piece decodes to about PIECE_BYTES, not the batch.
    rows = 20_000
    indices = pa.array([i % 2 for i in range(rows)], pa.int32())
    batch = _dictionary_batch(["a" * 1024, "b" * 1024], indices)
    target = pa.schema([("id", pa.int64()), ("tag", pa.string())])

    pieces = list(scan._decoded_pieces(iter([batch]), target))

    assert len(pieces) > 1
    assert max(p.get_total_buffer_size() for p in pieces) <= 1.1 * scan.PIECE_BYTES
    assert sum(p.num_rows for p in pieces) == rows
