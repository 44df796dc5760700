"""The Helm chart ``charts/lakehouse``, rendered by Helm's own engine without a cluster.

- ``helm lint --strict`` (Helm v4's engine through PyPI ``helm-python-sdk``, no helm binary)
  passes for the default values and for ``ci/full-values.yaml`` (every feature on);
- every rendered object validates strictly against the Kubernetes OpenAPI schemas of the
  oldest supported and the newest known Kubernetes (PyPI ``kubernetes-validate``, offline);
  the ServiceMonitor, a CRD those schemas lack, gets a structural check;
- the rendered pods do what the service needs: gRPC probes on the health service, named
  ports, settings from a ConfigMap and secrets as mounted files wired with ``*_FILE``
  variables (checked by loading the rendered environment with the service's own config
  loader), a termination grace period longer than its graceful shutdown, a non-root
  read-only-root security context, and standalone workers only when enabled;
- ``values.schema.json`` rejects bad values at install time and knows exactly the settings
  that ``lakehouse.config.Settings`` defines.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from lakehouse.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lakehouse"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "lh"
NAMESPACE = "data"
FULLNAME = "lh-lakehouse"
GRPC_PORT = 50051
HTTP_PORT = 9180

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version() + ".0")
#: Settings the chart sets itself from `ports`, `dataVolume` and `shutdown`.
CHART_MANAGED = {
    "LAKEHOUSE_GRPC_PORT",
    "LAKEHOUSE_HTTP_PORT",
    "LAKEHOUSE_DATA_DIR",
    "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS",
    "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS",
}
#: A catalog URI for tests that need a shared catalog (never a real credential).
CATALOG_URI = "postgresql+psycopg2://lakehouse:not-a-password@postgresql:5432/lakehouse"
SHARED_CATALOG = {"secret": {"values": {"catalog-uri": CATALOG_URI}}}
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@\"']+:[^/\s@\"']+@")

Docs = list[dict[str, Any]]


# --- rendering ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def full_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text())
    return values


@pytest.fixture(scope="module")
def render(chart: Any) -> Callable[..., dict[str, str]]:
    def _render(values: dict[str, Any] | None = None) -> dict[str, str]:
        rendered: dict[str, str] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
        return rendered

    return _render


@pytest.fixture(scope="module")
def manifests(render: Callable[..., dict[str, str]]) -> Callable[..., Docs]:
    def _manifests(values: dict[str, Any] | None = None) -> Docs:
        docs = []
        for path, text in sorted(render(values).items()):
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        return docs

    return _manifests


@pytest.fixture(scope="module")
def default_docs(manifests: Callable[..., Docs]) -> Docs:
    return manifests()


@pytest.fixture(scope="module")
def full_docs(manifests: Callable[..., Docs], full_values: dict[str, Any]) -> Docs:
    return manifests(full_values)


def one(docs: Docs, kind: str, name: str = FULLNAME) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def kinds(docs: Docs) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    entries = container(deployment)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e["value"] for e in entries if "value" in e}


# --- lint and Kubernetes schemas ------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_helm_lint_strict_passes(which: str, full_values: dict[str, Any]) -> None:
    values = full_values if which == "full" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", ["default", "full"])
def test_every_object_validates_strictly_against_kubernetes_schemas(
    which: str, kube_version: str, default_docs: Docs, full_docs: Docs
) -> None:
    docs = full_docs if which == "full" else default_docs
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate; see the ServiceMonitor test
        kubernetes_validate.validate(doc, kube_version, strict=True)
        checked.append(doc["kind"])
    assert "Deployment" in checked and "Service" in checked


def test_the_schema_validation_has_teeth(default_docs: Docs) -> None:
    deployment = copy.deepcopy(one(default_docs, "Deployment"))
    container(deployment)["livenessProbe"]["grpcc"] = {"port": GRPC_PORT}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_service_monitor_scrapes_server_and_workers_once(full_docs: Docs) -> None:
    monitor = one(full_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [(e["port"], e["path"]) for e in spec["endpoints"]] == [("http-metrics", "/metrics")]
    selected = [
        d
        for d in full_docs
        if d["kind"] == "Service"
        and spec["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    scraped = {
        d["metadata"]["name"]: d["spec"]["selector"]["app.kubernetes.io/component"]
        for d in selected
        if any(p["name"] == "http-metrics" for p in d["spec"]["ports"])
    }
    # Exactly one scraped Service per component: no pod is scraped twice.
    assert scraped == {FULLNAME: "server", f"{FULLNAME}-worker": "worker"}


# --- what the pods look like ----------------------------------------------------------------


def test_default_objects_and_optional_ones_are_switchable(
    default_docs: Docs, full_docs: Docs
) -> None:
    assert kinds(default_docs) == {
        ("ConfigMap", FULLNAME),
        ("Deployment", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("Service", FULLNAME),
        ("ServiceAccount", FULLNAME),
    }
    assert kinds(full_docs) == {
        ("ConfigMap", FULLNAME),
        ("Deployment", FULLNAME),
        ("Deployment", f"{FULLNAME}-worker"),
        ("HorizontalPodAutoscaler", FULLNAME),
        ("NetworkPolicy", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("PodDisruptionBudget", f"{FULLNAME}-worker"),
        ("Service", FULLNAME),
        ("Service", f"{FULLNAME}-headless"),
        ("Service", f"{FULLNAME}-worker"),
        ("ServiceAccount", FULLNAME),
        ("ServiceMonitor", FULLNAME),
    }  # no Secret: full-values uses existingSecret


def test_standard_labels_and_selectors_separate_server_from_workers(full_docs: Docs) -> None:
    for doc in full_docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "lakehouse"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "lakehouse-0.1.0"
    for name, component in ((FULLNAME, "server"), (f"{FULLNAME}-worker", "worker")):
        deployment = one(full_docs, "Deployment", name)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(full_docs, "Service")["spec"]["selector"]["app.kubernetes.io/component"] == (
        "server"
    )


def test_server_probes_use_the_grpc_health_service(default_docs: Docs, full_docs: Docs) -> None:
    for docs in (default_docs, full_docs):
        c = container(one(docs, "Deployment"))
        assert c["args"] == ["serve"]
        assert c["startupProbe"]["grpc"] == {"port": GRPC_PORT}
        assert c["readinessProbe"]["grpc"] == {"port": GRPC_PORT}
        # Liveness must not follow the dependencies (gRPC health does): /healthz answers while
        # the process lives, so a PostgreSQL outage does not restart every replica.
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
        assert "grpc" not in c["livenessProbe"]


def test_probes_switch_to_https_readyz_when_tls_is_on(
    manifests: Callable[..., Docs],
) -> None:
    # The kubelet's gRPC probes cannot speak TLS: they would fail on a TLS gRPC port and keep
    # every pod out of the Service.
    tls = {
        "LAKEHOUSE_TLS__CERT_FILE": "/etc/lakehouse/tls/tls.crt",
        "LAKEHOUSE_TLS__KEY_FILE": "/etc/lakehouse/tls/tls.key",
    }
    grpc_tls = container(one(manifests({"config": tls}), "Deployment"))
    for probe in ("startupProbe", "readinessProbe"):
        assert "grpc" not in grpc_tls[probe]
        assert grpc_tls[probe]["httpGet"] == {
            "path": "/readyz",
            "port": "http-metrics",
            "scheme": "HTTP",
        }
    assert grpc_tls["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}

    both = {
        **tls,
        "LAKEHOUSE_TLS__HTTP_CERT_FILE": "/etc/lakehouse/tls/tls.crt",
        "LAKEHOUSE_TLS__HTTP_KEY_FILE": "/etc/lakehouse/tls/tls.key",
    }
    docs = manifests({**SHARED_CATALOG, "config": both, "worker": {"enabled": True}})
    for deployment in (one(docs, "Deployment"), one(docs, "Deployment", f"{FULLNAME}-worker")):
        c = container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["scheme"] == "HTTPS", (deployment["metadata"], probe)


def test_ports_are_named_grpc_and_http_metrics(default_docs: Docs, full_docs: Docs) -> None:
    c = container(one(default_docs, "Deployment"))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": GRPC_PORT,
        "http-metrics": HTTP_PORT,
    }
    env = env_of(one(default_docs, "Deployment"))
    assert (env["LAKEHOUSE_GRPC_PORT"], env["LAKEHOUSE_HTTP_PORT"]) == (
        str(GRPC_PORT),
        str(HTTP_PORT),
    )
    service = one(default_docs, "Service")["spec"]
    assert service["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("grpc", GRPC_PORT, "grpc"),
        ("http-metrics", HTTP_PORT, "http-metrics"),
    ]
    headless = one(full_docs, "Service", f"{FULLNAME}-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["name"] for p in headless["ports"]] == ["grpc"]


def test_settings_come_from_the_configmap_and_secrets_from_files(full_docs: Docs) -> None:
    configmap = one(full_docs, "ConfigMap")
    assert all(key.startswith("LAKEHOUSE_") for key in configmap["data"])
    assert configmap["data"]["LAKEHOUSE_JOBS__IMPORT_PREFIXES"] == '["s3://landing/"]'
    assert configmap["data"]["LAKEHOUSE_INGEST__BUFFER_BYTES"] == "536870912"
    expected_files = {
        "LAKEHOUSE_CATALOG__URI_FILE": "catalog-uri",
        "LAKEHOUSE_S3__ACCESS_KEY_ID_FILE": "s3-access-key-id",
        "LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE": "s3-secret-access-key",
        "LAKEHOUSE_JOBS__DATABASE_URI_FILE": "jobs-database-uri",
        "LAKEHOUSE_TRINO__PASSWORD_FILE": "trino-password",
    }
    for name in (FULLNAME, f"{FULLNAME}-worker"):
        deployment = one(full_docs, "Deployment", name)
        c = container(deployment)
        assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
        assert all("valueFrom" not in e for e in c["env"])  # no secretKeyRef: no secret in env
        env = env_of(deployment)
        files = {k: v for k, v in env.items() if k.endswith("_FILE")}
        assert files == {k: f"/etc/lakehouse/secrets/{v}" for k, v in expected_files.items()}
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["secrets"]["mountPath"] == "/etc/lakehouse/secrets"
        assert mounts["secrets"]["readOnly"] is True
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        secret = volumes["secrets"]["secret"]
        assert secret["secretName"] == "lakehouse-credentials"
        assert secret["defaultMode"] == 0o440
        assert sorted(i["key"] for i in secret["items"]) == sorted(expected_files.values())
        assert all(i["key"] == i["path"] for i in secret["items"])


def test_chart_managed_secret_wires_only_keys_with_a_value(
    manifests: Callable[..., Docs], default_docs: Docs
) -> None:
    # Defaults: no value, so no Secret and no *_FILE (the settings keep their defaults).
    assert not any(d["kind"] == "Secret" for d in default_docs)
    assert not any(k.endswith("_FILE") for k in env_of(one(default_docs, "Deployment")))
    docs = manifests(SHARED_CATALOG)
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["catalog-uri"]).decode() == CATALOG_URI
    assert list(secret["data"]) == ["catalog-uri"]
    env = env_of(one(docs, "Deployment"))
    assert {k: v for k, v in env.items() if k.endswith("_FILE")} == {
        "LAKEHOUSE_CATALOG__URI_FILE": "/etc/lakehouse/secrets/catalog-uri"
    }


def test_existing_secret_wires_the_listed_keys_and_null_removes_one(
    manifests: Callable[..., Docs],
) -> None:
    # e.g. S3 access through IAM roles for service accounts: no S3 keys in the Secret.
    values = {
        "secret": {
            "existingSecret": "mine",
            "keys": {"LAKEHOUSE_S3__ACCESS_KEY_ID": None, "LAKEHOUSE_S3__SECRET_ACCESS_KEY": None},
        }
    }
    docs = manifests(values)
    deployment = one(docs, "Deployment")
    env = env_of(deployment)
    assert {k: v for k, v in env.items() if k.endswith("_FILE")} == {
        "LAKEHOUSE_CATALOG__URI_FILE": "/etc/lakehouse/secrets/catalog-uri"
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "mine"
    assert not any(d["kind"] == "Secret" for d in docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_the_service_config_loader_accepts_the_rendered_environment(
    manifests: Callable[..., Docs],
    full_values: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ConfigMap + env as the kubelet would set them, secret files as the volume would hold."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    secrets = {
        "catalog-uri": CATALOG_URI,
        "s3-access-key-id": "AKIAEXAMPLE",
        "s3-secret-access-key": "not-a-secret",
        "jobs-database-uri": CATALOG_URI.replace("/lakehouse", "/jobs"),
        "trino-password": "not-a-password",
    }
    for key, value in secrets.items():
        (secret_dir / key).write_text(value + "\n")
    values = {
        **full_values,
        "secret": {**full_values["secret"], "mountPath": str(secret_dir)},
        "dataVolume": {"mountPath": str(tmp_path / "data")},
    }
    docs = manifests(values)
    configmap = one(docs, "ConfigMap")["data"]
    loaded = {}
    for name, component in ((FULLNAME, "server"), (f"{FULLNAME}-worker", "worker")):
        with monkeypatch.context() as m:
            for key, value in {**configmap, **env_of(one(docs, "Deployment", name))}.items():
                m.setenv(key, value)
            loaded[component] = load_settings()
    server, worker = loaded["server"], loaded["worker"]
    assert server.catalog_uri == CATALOG_URI
    assert server.jobs_database_uri == secrets["jobs-database-uri"]
    assert server.s3.secret_access_key is not None
    assert server.s3.secret_access_key.get_secret_value() == "not-a-secret"
    assert server.trino.password is not None
    assert server.trino.password.get_secret_value() == "not-a-password"
    assert server.trino.endpoint == full_values["config"]["LAKEHOUSE_TRINO__ENDPOINT"]
    assert server.jobs.import_prefixes == ("s3://landing/",)
    assert server.data_dir == tmp_path / "data"
    assert (server.shutdown_drain_seconds, server.shutdown_grace_seconds) == (2, 30)
    assert server.jobs.workers == 0  # jobs run on the workers
    assert worker.jobs.workers == full_values["worker"]["concurrency"]
    assert worker.catalog_uri == CATALOG_URI


def test_termination_grace_covers_the_graceful_shutdown(
    chart: Any, default_docs: Docs, full_docs: Docs, full_values: dict[str, Any]
) -> None:
    for docs, values in ((default_docs, {}), (full_docs, full_values)):
        shutdown = {**chart.values["shutdown"], **values.get("shutdown", {})}
        server = one(docs, "Deployment")
        env = env_of(server)
        drain = float(env["LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS"])
        grace = float(env["LAKEHOUSE_SHUTDOWN_GRACE_SECONDS"])
        assert (drain, grace) == (shutdown["drainSeconds"], shutdown["graceSeconds"])
        pre_stop = container(server)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop == shutdown["preStopSleepSeconds"] > 0
        period = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > pre_stop + drain + grace
    worker = one(full_docs, "Deployment", f"{FULLNAME}-worker")
    assert "lifecycle" not in container(worker)  # no traffic to move away from a worker
    period = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    env = env_of(worker)
    assert period > float(env["LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS"]) + float(
        env["LAKEHOUSE_SHUTDOWN_GRACE_SECONDS"]
    )


def test_fractional_shutdown_seconds_round_the_grace_period_up(
    manifests: Callable[..., Docs],
) -> None:
    shutdown = {"preStopSleepSeconds": 3, "drainSeconds": 0.5, "graceSeconds": 7.25}
    deployment = one(manifests({"shutdown": shutdown}), "Deployment")
    env = env_of(deployment)
    assert env["LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS"] == "0.5"
    assert env["LAKEHOUSE_SHUTDOWN_GRACE_SECONDS"] == "7.25"
    # 3 + 0.5 + 7.25 + the default margin of 10, rounded up.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 21


def test_no_service_link_variables_that_the_config_loader_would_refuse(
    chart: Any,
) -> None:
    # Release "lakehouse" -> Service "lakehouse" -> links would be LAKEHOUSE_SERVICE_HOST etc.
    rendered = chart.render({"worker": {"enabled": True}, **SHARED_CATALOG}, name="lakehouse")
    docs = [
        d for p, t in rendered.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d
    ]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"lakehouse", "lakehouse-worker"}
    for deployment in deployments:
        assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_pods_run_non_root_on_a_read_only_root(full_docs: Docs) -> None:
    for name in (FULLNAME, f"{FULLNAME}-worker"):
        deployment = one(full_docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = container(deployment)["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # The writable places are emptyDirs: the data dir (spill files) and /tmp.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        data_dir = env_of(deployment)["LAKEHOUSE_DATA_DIR"]
        assert "emptyDir" in volumes[mounts[data_dir]]
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_worker_deployment_only_when_enabled_and_without_grpc(
    default_docs: Docs, full_docs: Docs, full_values: dict[str, Any]
) -> None:
    assert [d["metadata"]["name"] for d in default_docs if d["kind"] == "Deployment"] == [FULLNAME]
    assert "LAKEHOUSE_JOBS__WORKERS" not in env_of(one(default_docs, "Deployment"))
    worker = one(full_docs, "Deployment", f"{FULLNAME}-worker")
    assert worker["spec"]["replicas"] == full_values["worker"]["replicaCount"]
    c = container(worker)
    assert c["args"] == ["worker"]
    assert [p["name"] for p in c["ports"]] == ["http-metrics"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in c[probe]
        assert c[probe]["httpGet"]["port"] == "http-metrics"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "LAKEHOUSE_GRPC_PORT" not in env_of(worker)
    assert env_of(worker)["LAKEHOUSE_JOBS__WORKERS"] == str(full_values["worker"]["concurrency"])
    assert env_of(one(full_docs, "Deployment"))["LAKEHOUSE_JOBS__WORKERS"] == "0"


def test_server_job_workers_can_be_overridden(
    manifests: Callable[..., Docs], full_values: dict[str, Any]
) -> None:
    values = {**full_values, "config": {**full_values["config"], "LAKEHOUSE_JOBS__WORKERS": 1}}
    docs = manifests(values)
    assert "LAKEHOUSE_JOBS__WORKERS" not in env_of(one(docs, "Deployment"))
    assert one(docs, "ConfigMap")["data"]["LAKEHOUSE_JOBS__WORKERS"] == "1"
    worker_env = env_of(one(docs, "Deployment", f"{FULLNAME}-worker"))
    assert worker_env["LAKEHOUSE_JOBS__WORKERS"] == str(full_values["worker"]["concurrency"])


def test_autoscaling_replaces_replicas(full_docs: Docs) -> None:
    assert "replicas" not in one(full_docs, "Deployment")["spec"]
    hpa = one(full_docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    pdb = one(full_docs, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb


def test_config_and_secret_changes_roll_the_pods(manifests: Callable[..., Docs]) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        deployment = one(manifests(values), "Deployment")
        found: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return found

    base = annotations(SHARED_CATALOG)
    other_config = annotations({**SHARED_CATALOG, "config": {"LAKEHOUSE_LOG_LEVEL": "DEBUG"}})
    other_secret = annotations({"secret": {"values": {"catalog-uri": CATALOG_URI + "2"}}})
    assert other_config["checksum/config"] != base["checksum/config"]
    assert other_config["checksum/secret"] == base["checksum/secret"]
    assert other_secret["checksum/secret"] != base["checksum/secret"]
    assert other_secret["checksum/config"] == base["checksum/config"]


def test_network_policy_admits_grpc_and_metrics_and_dns(full_docs: Docs) -> None:
    policy = one(full_docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [r["ports"][0]["port"] for r in policy["ingress"]] == ["grpc", "http-metrics"]
    assert {p["port"] for p in policy["egress"][0]["ports"]} == {53}


# --- no addresses, no credentials -----------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_no_ip_address_or_credential_in_the_output(
    which: str, render: Callable[..., dict[str, str]], full_values: dict[str, Any]
) -> None:
    text = "\n".join(render(full_values if which == "full" else None).values())
    assert IPV4.findall(text) == []
    assert URL_WITH_PASSWORD.findall(text) == []
    assert "ghcr.io" not in text and "docker.io" not in text


def test_defaults_point_at_services_by_name_and_hold_no_credentials(chart: Any) -> None:
    values = chart.values
    assert values["image"]["repository"] == "lakehouse" and values["image"]["tag"] == ""
    assert values["config"]["LAKEHOUSE_CATALOG__WAREHOUSE"] == "s3://lakehouse/warehouse"
    assert values["config"]["LAKEHOUSE_S3__ENDPOINT_URL"] == "http://minio:9000"
    assert values["secret"]["keys"]["LAKEHOUSE_CATALOG__URI"] == "catalog-uri"
    assert values["secret"]["values"] == {} and values["secret"]["existingSecret"] == ""
    text = yaml.safe_dump(values)  # the values, not the comments' placeholders
    assert IPV4.findall(text) == [] and URL_WITH_PASSWORD.findall(text) == []


# --- values.schema.json ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicas": 2}, "'replicas' not allowed"),
        ({"ports": {"grpc": 70000}}, "/ports/grpc"),
        ({"ports": {"http": 0}}, "/ports/http"),
        ({"config": {"LAKEHOUSE_CATALOG_WAREHOUSE": "s3://x/y"}}, "LAKEHOUSE_CATALOG_WAREHOUSE"),
        ({"config": {"LAKEHOUSE_CATALOG__URI": CATALOG_URI}}, "LAKEHOUSE_CATALOG__URI"),
        ({"config": {"LAKEHOUSE_GRPC_PORT": 1234}}, "LAKEHOUSE_GRPC_PORT"),
        ({"image": {"tag": 1.1}}, "/image/tag"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"worker": {"enabled": "yes"}}, "/worker/enabled"),
        ({"shutdown": {"graceSeconds": -1}}, "/shutdown/graceSeconds"),
        ({"secret": {"keys": {"LAKEHOUSE_NOPE": "x"}}}, "LAKEHOUSE_NOPE"),
        ({"probes": {"liveness": {"successThreshold": 2}}}, "successThreshold"),
    ],
)
def test_schema_rejects_bad_values(
    values: dict[str, Any], message: str, render: Callable[..., dict[str, str]]
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        render(values)
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert any(message in error for error in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 3}, "several pods need a shared catalog"),
        ({"worker": {"enabled": True}}, "several pods need a shared catalog"),
        ({"autoscaling": {"enabled": True}}, "several pods need a shared catalog"),
        ({"secret": {"values": {"trino-password": "x"}}}, "secret.values.trino-password"),
        (
            {"secret": {"existingSecret": "mine", "values": {"catalog-uri": "x"}}},
            "only used without secret.existingSecret",
        ),
        (
            {"secret": {"keys": {"LAKEHOUSE_S3__ACCESS_KEY_ID": "catalog-uri"}}},
            "two settings map to the same key",
        ),
        (
            {
                **SHARED_CATALOG,
                "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
            },
            "minReplicas must not exceed",
        ),
        ({"ports": {"grpc": 9180}}, "ports.grpc and ports.http must differ"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str, render: Callable[..., dict[str, str]]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_schema_knows_exactly_the_service_settings(chart: Any) -> None:
    """A setting added to lakehouse.config.Settings must be added to values.schema.json."""
    names, secret_names = set(), set()
    for field, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub, sub_info in section.model_fields.items():
                name = f"LAKEHOUSE_{field.upper()}__{sub.upper()}"
                names.add(name)
                if "SecretStr" in str(sub_info.annotation):
                    secret_names.add(name)
        else:
            names.add(f"LAKEHOUSE_{field.upper()}")
    assert names >= CHART_MANAGED
    schema = chart.schema
    config_names = set(schema["properties"]["config"]["propertyNames"]["enum"])
    key_names = set(schema["properties"]["secret"]["properties"]["keys"]["propertyNames"]["enum"])
    where = "charts/lakehouse/values.schema.json, properties.%s.propertyNames.enum"
    expected_config = names - CHART_MANAGED - secret_names
    assert config_names == expected_config, (
        f"{where % 'config'}: add {sorted(expected_config - config_names)}, "
        f"remove {sorted(config_names - expected_config)}"
    )
    expected_keys = names - CHART_MANAGED
    assert key_names == expected_keys, (
        f"{where % 'secret.properties.keys'}: add {sorted(expected_keys - key_names)}, "
        f"remove {sorted(key_names - expected_keys)}"
    )
    assert set(chart.values["config"]) <= config_names


def test_notes_explain_http2_load_balancing(
    render: Callable[..., dict[str, str]], full_values: dict[str, Any]
) -> None:
    default_notes = render()["lakehouse/templates/NOTES.txt"]
    assert "balances connections, not calls" in default_notes
    assert "service.headless=true" in default_notes
    assert "WARNING: no catalog URI" in default_notes
    full_notes = render(full_values)["lakehouse/templates/NOTES.txt"]
    assert f"dns:///{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local:{GRPC_PORT}" in full_notes
    assert "round_robin" in full_notes
    assert "WARNING" not in full_notes
    assert "HTTP/2" in (CHART / "values.yaml").read_text()
