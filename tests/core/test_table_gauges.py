"""Per-table gauges keep series for a bounded number of tables, the most recently touched."""

from __future__ import annotations

from prometheus_client import REGISTRY

from lakehouse.metrics import TableGauges


def value(table: str) -> float | None:
    return REGISTRY.get_sample_value(
        "lakehouse_table_data_files", {"namespace": "gauges", "table": table}
    )


def test_touching_one_table_too_many_removes_the_least_recent_series() -> None:
    gauges = TableGauges(max_tables=2)
    gauges.touched(("gauges", "a"), data_files=1)
    gauges.touched(("gauges", "b"), data_files=2)
    gauges.touched(("gauges", "a"), snapshots=7)  # a is now the most recent
    gauges.touched(("gauges", "c"), data_files=3)

    assert gauges.tracked() == [("gauges", "a"), ("gauges", "c")]
    assert (value("a"), value("b"), value("c")) == (1.0, None, 3.0)
    for table in ("a", "c"):  # leave the shared registry as found
        gauges.touched(("gauges", f"x{table}"))
    TableGauges(max_tables=0).touched(("gauges", "never"), data_files=1)
    assert value("never") is None
