"""Every metric the service exports is documented (docs/operations/metrics.md, or the page of
its topic, which that page links to), and every metric the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.doc_pages import doc_pages

ROOT = Path(__file__).parents[2]
PAGES = doc_pages()
#: A metric's definition: ``Counter("name", ...``, also split over lines, or a family a
#: collector renders (``CounterMetricFamily("name", ...``).
DEFINED = re.compile(
    r'\b(?:Counter|Gauge|Histogram|Summary|Info)(?:MetricFamily)?\(\s*"([a-z_:][a-z0-9_:]*)"'
)
#: A backticked name of ours in the docs, with its labels if any (``name{label}``).
NAMED = re.compile(r"`((?:lakehouse|grpc_server)_[a-z0-9_]+)(?:\{[^}`]*\})?`")


def _defined() -> set[str]:
    source = "\n".join(p.read_text() for p in (ROOT / "lakehouse").rglob("*.py"))
    return set(DEFINED.findall(source))


def _docs() -> str:
    return "\n".join(p.read_text() for p in PAGES)


def test_every_exported_metric_is_documented() -> None:
    defined = _defined()
    assert len(defined) > 30
    assert {"grpc_server_handled_total", "lakehouse_ingest_rows_total"} <= defined
    docs = _docs()
    missing = sorted(m for m in defined if not re.search(rf"`{m}(?:\{{[^}}`]*\}})?`", docs))
    assert not missing, f"metrics no page documents: {missing}"


def test_every_documented_metric_exists() -> None:
    defined = _defined()
    # Only names that can be nothing but metrics: the docs also name SQL tables
    # (``lakehouse_jobs``, ``lakehouse_request_ids``) with the same prefix.
    named = {
        m
        for m in NAMED.findall(_docs())
        if m.startswith("grpc_server_") or re.search(r"_(total|seconds|bytes)$", m)
    }
    assert len(named) > 20
    unknown = sorted(named - defined)
    assert not unknown, f"the docs name metrics the service does not export: {unknown}"
