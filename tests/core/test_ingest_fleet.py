"""How a commit owner decides which handed batches still continue a table's state exactly."""

from __future__ import annotations

from lakehouse.core.ingest_fleet import add_batches, resolutions
from lakehouse.domain.ingest import AppendPlan, BatchEntry, BatchStatus, IngestState, PendingBatch


def state(**writers: int) -> IngestState:
    return IngestState(
        snapshot_id=7,
        writers={w: (offset, 0) for w, offset in writers.items()},
        request_ids={"old": 5},
        batch_ids=frozenset({"committed-before"}),
    )


def batch(batch_id: str, *entries: BatchEntry) -> PendingBatch:
    return PendingBatch(batch_id, entries, f"files of {batch_id}".encode(), 10)


def test_batches_that_continue_the_state_are_committed_in_order() -> None:
    plan = AppendPlan(None, writers={"w": (10, 0)}, commit_writers=["w"])  # the owner's rows
    fates = add_batches(
        plan,
        [
            batch("a", BatchEntry("r1", 3, "", None, None), BatchEntry("", 2, "w", 10, 12)),
            batch("b", BatchEntry("", 4, "w", 12, 16)),  # continues a's rows of w
            batch("c", BatchEntry("", 1, "v", 0, 1)),
        ],
        state(w=4),
        now_ms=99,
    )
    assert fates == {
        "a": BatchStatus.COMMITTED,
        "b": BatchStatus.COMMITTED,
        "c": BatchStatus.COMMITTED,
    }
    assert plan.writers == {"w": (16, 99), "v": (1, 99)}
    assert plan.commit_writers == ["v", "w"]
    assert plan.request_ids == {"r1": 3}
    assert plan.batch_ids == ["a", "b", "c"]
    assert plan.files == [b"files of a", b"files of b", b"files of c"]


def test_batches_that_no_longer_fit_go_back_whole() -> None:
    plan = AppendPlan(None, request_ids={"mine": 1})
    fates = add_batches(
        plan,
        [
            batch("old-id", BatchEntry("old", 5, "", None, None)),  # committed before
            batch(
                "owner-id",
                BatchEntry("ok", 1, "", None, None),
                BatchEntry("mine", 1, "", None, None),
            ),
            batch("stale-offset", BatchEntry("", 3, "w", 2, 5)),  # w is at 4 now
            batch("twice", BatchEntry("dup", 1, "", None, None)),
            batch("twice-again", BatchEntry("dup", 1, "", None, None)),
            batch("committed-before", BatchEntry("x", 1, "", None, None)),
        ],
        state(w=4),
        now_ms=99,
    )
    assert fates == {
        "old-id": BatchStatus.REJECTED,
        "owner-id": BatchStatus.REJECTED,
        "stale-offset": BatchStatus.REJECTED,
        "twice": BatchStatus.COMMITTED,
        "twice-again": BatchStatus.REJECTED,
        "committed-before": BatchStatus.COMMITTED,  # an owner died after committing it
    }
    # Nothing of a rejected batch is in the plan (not "ok" of owner-id either).
    assert plan.request_ids == {"mine": 1, "dup": 1}
    assert plan.batch_ids == ["twice"]
    assert plan.writers == {}


def test_a_batch_whose_request_ids_cannot_be_checked_fails_and_keeps_its_files() -> None:
    plan = AppendPlan(None)
    doubt = IngestState(7, {}, {}, unverified=frozenset({"maybe"}))
    fates = add_batches(
        plan,
        [
            batch("doubt", BatchEntry("maybe", 1, "", None, None)),
            batch("fine", BatchEntry("", 2, "", None, None)),
        ],
        doubt,
        now_ms=99,
    )
    # Not REJECTED (whose files its replica deletes): the doubt passes, and an owner that lost
    # its lease mid-commit may still commit the batch on its next attempt.
    assert fates == {"doubt": BatchStatus.FAILED, "fine": BatchStatus.COMMITTED}
    assert plan.batch_ids == ["fine"]
    (failed,) = [r for r in resolutions(fates, 5) if r.batch_id == "doubt"]
    assert failed.error is not None and failed.error.reason == "REQUEST_ID_STORE_UNAVAILABLE"
