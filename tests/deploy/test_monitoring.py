"""The Grafana dashboard and the Prometheus alerts, checked with the real tools.

- every metric a dashboard query or an alert rule names is one a real ``lakehouse serve``
  exports (names from a scrape of its /metrics after some traffic), so a renamed metric
  breaks here, not on an operator's screen;
- every dashboard query parses: each, its Grafana variables substituted, becomes a recording
  rule of a generated rules file that ``promtool check rules`` (Debian's ``prometheus``)
  parses; the rules file passes ``promtool check rules`` too;
- ``promtool test rules`` runs the unit tests of tests/deploy/alerts/: every alert has a case
  where it fires and one where it stays quiet, and a wrong threshold fails them;
- every alert has a runbook section in docs/operations/alerts.md;
- the chart ships both (Helm's own engine): the dashboard ConfigMap with the sidecar's label,
  the PrometheusRule with the file's rules, its job selector and the per-alert overrides.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fixtures.serve_process import serve_process
from fixtures.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lakehouse"
DASHBOARD = CHART / "dashboards" / "lakehouse.json"
RULES = CHART / "alerts" / "lakehouse-rules.yaml"
RULE_TESTS = sorted((ROOT / "tests" / "deploy" / "alerts").glob("*.test.yaml"))
ALERTS_DOC = ROOT / "docs" / "operations" / "alerts.md"
#: Values the Grafana variables take for parsing (what Grafana would put there).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "6h",
    "${job}": ".+",
    "$job": ".+",
    "${instance}": ".+",
    "$instance": ".+",
}
#: Series Prometheus makes itself for every target: no service exports them.
PROMETHEUS_SERIES = {"up"}
#: What the issue asks the dashboard to show, as the metrics that show it.
DASHBOARD_MUST_SHOW = {
    "grpc_server_handled_total",  # RPC rate, errors by code
    "grpc_server_handling_seconds_bucket",  # latency p50/p99 by method
    "lakehouse_ingest_rows_total",
    "lakehouse_ingest_bytes_total",
    "lakehouse_ingest_commit_seconds_bucket",
    "lakehouse_ingest_commit_conflicts_total",
    "lakehouse_ingest_buffered_bytes",
    "lakehouse_jobs_running",  # jobs by state
    "lakehouse_jobs_finished_total",
    "lakehouse_jobs_queued",  # queue depth
    "lakehouse_dependency_breaker_state",
    "process_resident_memory_bytes",
}
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


# --- reading queries ------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p.get("type") != "row"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p["targets"]]


def variable_selectors() -> list[str]:
    """The series selectors of the dashboard's query variables (``label_values(SELECTOR, L)``)."""
    selectors = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query["query"])
        assert match, f"an unexpected variable query: {query}"
        selectors.append(match.group(1))
    return selectors


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, grouping
    labels, durations, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b[a-zA-Z_]\w*\s*\(", "(", text)  # function calls
    words = set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", text))
    return {w for w in words if w.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d\w*", w)}


def test_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, grpc_method) "
        "(rate(grpc_server_handling_seconds_bucket"
        '{job=~"x", grpc_type="unary"}[5m]))) > 2.5 and on (job) up{job="a"} == 1 '
        "unless max without (instance) (lakehouse_jobs_queued offset 6h)"
    )
    assert metric_names(expr) == {
        "grpc_server_handling_seconds_bucket",
        "up",
        "lakehouse_jobs_queued",
    }


# --- a real scrape --------------------------------------------------------------------------


def scraped_names(text: str) -> set[str]:
    """Every series name the exposition declares or carries (a labelled metric with no child
    yet is declared by its HELP and TYPE lines)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _grpcurl(grpcurl: Path, target: str, method: str, data: dict[str, Any]) -> None:
    result = run_tool([grpcurl, "-plaintext", "-d", json.dumps(data), target, method])
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, grpcurl: Path) -> Iterator[set[str]]:
    """Names from a real scrape, after traffic that gives the labelled metrics children."""
    with serve_process(tmp_path_factory.mktemp("monitoring"), {}) as server:
        table = {"namespace": "obs", "table": "events"}
        calls: list[tuple[str, dict[str, Any]]] = [
            ("TableService/CreateNamespace", {"name": "obs"}),
            (
                "TableService/CreateTable",
                {
                    **table,
                    "schema": {
                        "fields": [
                            {"name": "id", "type": {"primitive": "PRIMITIVE_TYPE_LONG"}},
                        ]
                    },
                },
            ),
            ("IngestService/WriteRows", {**table, "jsonRows": {"rows": [{"id": 1}, {"id": 2}]}}),
            ("TableService/GetTableHealth", table),
        ]
        for method, data in calls:
            _grpcurl(grpcurl, server.target, f"lakehouse.v1.{method}", data)
        missing = run_tool(
            [
                grpcurl,
                "-plaintext",
                "-d",
                '{"name": "nope"}',
                server.target,
                "lakehouse.v1.TableService/GetNamespace",
            ]
        )
        assert missing.returncode != 0  # a NotFound, for grpc_code
        with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    # The traffic reached the metrics the dashboard and alerts are about.
    assert samples["lakehouse_ingest_rows_total"] == 2
    assert samples["lakehouse_ingest_buffer_limit_bytes"] > 0
    assert samples["lakehouse_build_info"] == 1  # the dashboard's job and instance pickers
    assert "lakehouse_table_small_data_files" in samples
    yield scraped_names(text)


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(
    exported: set[str],
) -> None:
    queries = [
        *dashboard_queries(),
        *variable_selectors(),
        *(rule["expr"] for rule in alert_rules()),
    ]
    used: set[str] = set()
    for expr in queries:
        names = metric_names(substituted(expr))
        assert names, f"a query that selects no metric: {expr}"
        used |= names
    unknown = sorted(used - exported - PROMETHEUS_SERIES)
    assert not unknown, f"queried but not exported by lakehouse serve: {unknown}"
    assert used >= DASHBOARD_MUST_SHOW


# --- the dashboard --------------------------------------------------------------------------


def test_every_dashboard_query_parses(promtool: Path, tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": substituted(q)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run_tool([promtool, "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout

    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "bad",
                        "rules": [{"record": "dashboard:bad", "expr": "sum by (le (rate(x[1m]))"}],
                    }
                ]
            }
        )
    )
    assert run_tool([promtool, "check", "rules", path]).returncode != 0  # it does check


def test_dashboard_panels_are_complete_and_use_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "lakehouse"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(board)]
    assert len(titles) == len(set(titles))
    for panel in panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # every query follows the job and instance pickers
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


# --- the alerts -----------------------------------------------------------------------------


def test_the_rules_file_passes_promtool_check(promtool: Path) -> None:
    result = run_tool([promtool, "check", "rules", RULES])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_alert_unit_tests_pass(promtool: Path) -> None:
    assert RULE_TESTS
    result = run_tool([promtool, "test", "rules", *RULE_TESTS], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, set[bool]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test["alert_rule_test"]:
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in alert_rules():
        assert cases.get(rule["alert"]) == {True, False}, (
            f"{rule['alert']}: needs a case where it fires and one where it stays quiet"
        )


def test_a_wrong_threshold_fails_the_unit_tests(promtool: Path, tmp_path: Path) -> None:
    """The unit tests have teeth: an error-ratio alert at 50% no longer fires where it must."""
    chart_alerts = tmp_path / "charts" / "lakehouse" / "alerts"
    chart_alerts.mkdir(parents=True)
    text = RULES.read_text()
    assert "> 0.05" in text
    (chart_alerts / RULES.name).write_text(text.replace("> 0.05", "> 0.5"))
    tests_dir = tmp_path / "tests" / "deploy" / "alerts"
    tests_dir.mkdir(parents=True)
    for path in RULE_TESTS:
        shutil.copy(path, tests_dir / path.name)
    result = run_tool(
        [promtool, "test", "rules", *sorted(tests_dir.glob("*.test.yaml"))], timeout=120
    )
    assert result.returncode != 0
    assert "LakehouseHighErrorRatio" in result.stdout + result.stderr


def test_the_docs_promtool_commands_run_as_written(promtool: Path) -> None:
    """docs/operations/alerts.md shows how to check a changed copy: those lines work."""
    blocks = re.findall(r"^```sh\n(.*?)^```", ALERTS_DOC.read_text(), re.M | re.S)
    (block,) = [b for b in blocks if "promtool" in b]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace("promtool ", f"{promtool} ")],
        cwd=ROOT,  # the paths are the repository's
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2, result.stdout


def test_every_alert_has_a_runbook_section() -> None:
    doc = ALERTS_DOC.read_text()
    headings = set(re.findall(r"^### (\w+)$", doc, re.M))
    for rule in alert_rules():
        name = rule["alert"]
        assert name in headings, f"docs/operations/alerts.md has no section for {name}"
        assert rule["annotations"]["runbook"] == f"docs/operations/alerts.md#{name.lower()}"
        assert {"summary", "description"} <= rule["annotations"].keys()
        assert rule["labels"]["severity"] in {"warning", "critical"}


# --- in the chart ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def rendered(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    out: dict[str, str] = chart.render(values, name="lh", namespace="data")
    return [
        doc
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar(chart: Any) -> None:
    off = rendered(chart, {})
    assert not [d for d in off if d["metadata"]["name"] == "lh-lakehouse-dashboard"]

    docs = rendered(chart, {"grafanaDashboard": {"enabled": True}})
    (config_map,) = [d for d in docs if d["metadata"]["name"] == "lh-lakehouse-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["lakehouse.json"]) == dashboard()

    docs = rendered(
        chart,
        {
            "grafanaDashboard": {
                "enabled": True,
                "label": "dashboards.example.com/grafana",
                "labelValue": "lakehouse",
                "namespace": "monitoring",
            }
        },
    )
    (config_map,) = [d for d in docs if d["metadata"]["name"] == "lh-lakehouse-dashboard"]
    labels = config_map["metadata"]["labels"]
    assert labels["dashboards.example.com/grafana"] == "lakehouse"
    assert "grafana_dashboard" not in labels
    assert config_map["metadata"]["namespace"] == "monitoring"


def test_the_chart_ships_the_alerts_as_a_prometheus_rule(chart: Any) -> None:
    assert not [d for d in rendered(chart, {}) if d["kind"] == "PrometheusRule"]

    docs = rendered(chart, {"prometheusRule": {"enabled": True}})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    got = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    file_rules = {r["alert"]: r for r in alert_rules()}
    assert got.keys() == file_rules.keys()
    # The chart's own Services are the scrape jobs; everything else is the file's.
    assert (
        got["LakehouseDown"]["expr"].strip() == 'up{job=~"lh-lakehouse|lh-lakehouse-worker"} == 0'
    )
    for name, expected in file_rules.items():
        if name != "LakehouseDown":
            assert got[name] == expected, name  # no runbook_url without a base URL either

    docs = rendered(
        chart,
        {
            "prometheusRule": {
                "enabled": True,
                "jobSelector": 'job="lakehouse-prod"',
                "runbookBaseUrl": "https://git.example.com/lakehouse/blob/main/",
                "alerts": {
                    "LakehouseHighLatency": {"for": "15m", "severity": "critical", "expr": "x > 5"},
                    "LakehouseJobFailures": {"enabled": False},
                },
            }
        },
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    got = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "LakehouseJobFailures" not in got
    latency = got["LakehouseHighLatency"]
    assert (latency["for"], latency["labels"]["severity"], latency["expr"]) == (
        "15m",
        "critical",
        "x > 5",
    )
    assert got["LakehouseDown"]["expr"].strip() == 'up{job="lakehouse-prod"} == 0'
    assert got["LakehouseDown"]["annotations"]["runbook_url"] == (
        "https://git.example.com/lakehouse/blob/main/docs/operations/alerts.md#lakehousedown"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"prometheusRule": {"alerts": {"LakehouseHighLatenzy": {"for": "1m"}}}},
            "invalid propertyName 'LakehouseHighLatenzy'",
        ),
        (
            {"prometheusRule": {"alerts": {"LakehouseHighLatency": {"for": "soon"}}}},
            "/prometheusRule/alerts/LakehouseHighLatency/for",
        ),
        ({"grafanaDashboard": {"label": "bad label!"}}, "/grafanaDashboard/label"),
    ],
)
def test_the_schema_refuses_bad_monitoring_values(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        rendered(chart, values)


def test_the_schema_knows_exactly_the_alerts_of_the_rules_file() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    alerts = schema["properties"]["prometheusRule"]["properties"]["alerts"]
    assert alerts["propertyNames"]["enum"] == [rule["alert"] for rule in alert_rules()]
