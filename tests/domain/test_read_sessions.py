"""How a read session's files split into streams, and what its name claims unverified."""

from __future__ import annotations

import random

import pytest

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.read_sessions import (
    SessionClaims,
    b64decode,
    b64encode,
    claimed_table,
    split_by_bytes,
)


def test_runs_cover_every_file_once_in_order() -> None:
    rng = random.Random(7)
    for _ in range(500):
        sizes = [rng.randint(0, 1000) for _ in range(rng.randint(0, 40))]
        wanted = rng.randint(1, 50)
        runs = split_by_bytes(sizes, wanted)
        assert len(runs) == max(1, min(wanted, len(sizes)))
        assert [i for run in runs for i in run] == list(range(len(sizes)))
        if sizes:
            assert all(len(run) >= 1 for run in runs)


def test_runs_are_roughly_equal_in_bytes() -> None:
    assert split_by_bytes([100] * 12, 4) == [range(0, 3), range(3, 6), range(6, 9), range(9, 12)]
    # One large file alone, the small ones together.
    assert split_by_bytes([900, 100, 100, 100, 100, 100], 2) == [range(0, 1), range(1, 6)]
    assert split_by_bytes([10, 10, 10, 10, 1000], 2) == [range(0, 4), range(4, 5)]
    assert split_by_bytes([], 4) == [range(0, 0)]
    assert split_by_bytes([5], 8) == [range(0, 1)]


def test_the_claimed_table_is_read_without_the_signature() -> None:
    claims = SessionClaims("sales", "orders", 1, (), "", 0, 2, "p", 10)
    assert claimed_table(f"{b64encode(claims.encode())}.sig") == ("sales", "orders")
    assert claimed_table("garbage") == ("", "")
    assert SessionClaims.decode(b64decode(b64encode(claims.encode()))) == claims
    with pytest.raises(InvalidArgument) as raised:
        SessionClaims.decode(b'{"version": 99}')
    assert raised.value.reason == "INVALID_READ_SESSION"
