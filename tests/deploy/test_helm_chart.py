"""The Helm chart ``charts/lakehouse``, rendered by Helm's own engine without a cluster.

- ``helm lint --strict`` (Helm v4's engine through PyPI ``helm-python-sdk``, no helm binary)
  passes for the default values and for ``ci/full-values.yaml`` (every feature on);
- every rendered object validates strictly against the Kubernetes OpenAPI schemas of the
  oldest supported and the newest known Kubernetes (PyPI ``kubernetes-validate``, offline);
  the ServiceMonitor, a CRD those schemas lack, gets a structural check;
- the rendered pods do what the service needs: gRPC probes on the health service (liveness
  on its own "liveness" name; HTTP when the kubelet's plaintext gRPC probes cannot work),
  named ports, settings from a ConfigMap and secrets as mounted files wired with ``*_FILE``
  variables, or as the path itself for settings that name a file (checked by loading the
  rendered environment with the service's own config loader), the PostgreSQL catalog by DNS
  name with its password from a Secret, a termination grace period longer than its graceful
  shutdown, a non-root read-only-root security context, and standalone workers only when
  enabled;
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
from sqlalchemy.engine import make_url

from fixtures.certs import TestCA
from lakehouse.config import Settings, file_setting_names, load_settings
from lakehouse.server.health import LIVENESS_SERVICE
from lakehouse.server.tls import load_ca_bundle, load_key_pair

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lakehouse"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "lh"
NAMESPACE = "data"
FULLNAME = "lh-lakehouse"
GRPC_PORT = 50051
HTTP_PORT = 9180

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
#: Secret settings that `config` may hold when they carry no secret (the schema checks the
#: value: a catalog URI without a password).
SECRET_CAPABLE_IN_CONFIG = {"LAKEHOUSE_CATALOG__URI"}
#: Settings the chart sets itself from `ports`, `dataVolume` and `shutdown`.
CHART_MANAGED = {
    "LAKEHOUSE_GRPC_PORT",
    "LAKEHOUSE_HTTP_PORT",
    "LAKEHOUSE_FLIGHT_PORT",
    "LAKEHOUSE_DATA_DIR",
    "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS",
    "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS",
}
#: The default catalog: PostgreSQL by DNS name, the password from the Secret.
DEFAULT_CATALOG_URI = "postgresql+psycopg2://lakehouse@postgresql:5432/lakehouse"
#: A catalog URI holding a password (never a real credential).
CATALOG_URI = "postgresql+psycopg2://lakehouse:not-a-password@postgresql:5432/lakehouse"
#: A password that needs URL quoting on its way into the URI.
CATALOG_PASSWORD = "n0t:a/pass@word%?#"
SHARED_CATALOG = {"secret": {"values": {"catalog-password": CATALOG_PASSWORD}}}
#: The try-out: no PostgreSQL, the embedded SQLite catalog in the pod's emptyDir.
EMBEDDED_CATALOG: dict[str, Any] = {"config": {"LAKEHOUSE_CATALOG__URI": None}}
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
        ("ConfigMap", f"{FULLNAME}-dashboard"),
        ("Deployment", FULLNAME),
        ("Deployment", f"{FULLNAME}-worker"),
        ("HorizontalPodAutoscaler", FULLNAME),
        ("NetworkPolicy", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("PodDisruptionBudget", f"{FULLNAME}-worker"),
        ("PrometheusRule", FULLNAME),
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
        # Liveness must not follow the dependencies (the overall status does): its own name
        # is SERVING while the process lives, so a PostgreSQL outage restarts no replica.
        assert c["livenessProbe"]["grpc"] == {"port": GRPC_PORT, "service": LIVENESS_SERVICE}
        assert all("httpGet" not in c[p] for p in ("startupProbe", "readinessProbe"))
        assert "httpGet" not in c["livenessProbe"]


TLS_FILES = {
    "LAKEHOUSE_TLS__CERT_FILE": "/etc/lakehouse/tls/tls.crt",
    "LAKEHOUSE_TLS__KEY_FILE": "/etc/lakehouse/tls/tls.key",
}
HTTP_TLS_FILES = {
    "LAKEHOUSE_TLS__HTTP_CERT_FILE": "/etc/lakehouse/tls/tls.crt",
    "LAKEHOUSE_TLS__HTTP_KEY_FILE": "/etc/lakehouse/tls/tls.key",
}


def http_probes(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The probes' httpGet handlers, asserting none is a gRPC probe."""
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    assert all("grpc" not in c[p] for p in probes), c
    return {p: c[p]["httpGet"] for p in probes}


def expected_http_probes(scheme: str) -> dict[str, dict[str, Any]]:
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http-metrics", "scheme": scheme}

    return {
        "startupProbe": get("/readyz"),
        "readinessProbe": get("/readyz"),
        "livenessProbe": get("/healthz"),
    }


def tls_in_secret(files: dict[str, str]) -> dict[str, Any]:
    """Values that map the TLS files to keys of an existing Secret instead of config."""
    keys = {name: name.removeprefix("LAKEHOUSE_").lower().replace("__", ".") for name in files}
    return {"secret": {"existingSecret": "lakehouse-tls", "keys": keys}}


@pytest.mark.parametrize("where", ["config", "secret"])
def test_probes_switch_to_https_readyz_when_tls_is_on(
    where: str, manifests: Callable[..., Docs]
) -> None:
    # The kubelet's gRPC probes cannot speak TLS: they would fail on a TLS gRPC port and keep
    # every pod out of the Service. TLS files may come from config or from a Secret.
    def values(files: dict[str, str], **more: Any) -> dict[str, Any]:
        return {"config": files, **more} if where == "config" else {**tls_in_secret(files), **more}

    grpc_tls = container(one(manifests(values(TLS_FILES)), "Deployment"))
    assert http_probes(grpc_tls) == expected_http_probes("HTTP")

    both = values({**TLS_FILES, **HTTP_TLS_FILES}, worker={"enabled": True})
    docs = manifests(both)
    assert http_probes(container(one(docs, "Deployment"))) == expected_http_probes("HTTPS")
    worker = container(one(docs, "Deployment", f"{FULLNAME}-worker"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"]["scheme"] == "HTTPS", probe

    # TLS on the sidecar only: the gRPC probes stay.
    http_only = container(one(manifests(values(HTTP_TLS_FILES)), "Deployment"))
    assert http_only["readinessProbe"]["grpc"] == {"port": GRPC_PORT}


@pytest.mark.parametrize("value", [False, "false", "0", "off"])
def test_probes_switch_to_http_when_grpc_health_needs_credentials(
    value: object, manifests: Callable[..., Docs]
) -> None:
    # The kubelet's gRPC probes carry no credentials: with auth.public_health off they would
    # get UNAUTHENTICATED and keep every pod unready (and restart them all).
    values = {"config": {"LAKEHOUSE_AUTH__PUBLIC_HEALTH": value}}
    c = container(one(manifests(values), "Deployment"))
    assert http_probes(c) == expected_http_probes("HTTP")
    public = container(
        one(manifests({"config": {"LAKEHOUSE_AUTH__PUBLIC_HEALTH": True}}), "Deployment")
    )
    assert public["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE


def test_probes_stay_grpc_when_only_the_sidecar_probes_need_credentials(
    manifests: Callable[..., Docs],
) -> None:
    # auth.public_probes guards /healthz and /readyz, which the server's gRPC probes never use.
    c = container(
        one(manifests({"config": {"LAKEHOUSE_AUTH__PUBLIC_PROBES": False}}), "Deployment")
    )
    assert c["readinessProbe"]["grpc"] == {"port": GRPC_PORT}
    assert c["livenessProbe"]["grpc"] == {"port": GRPC_PORT, "service": LIVENESS_SERVICE}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "config": {
                    "LAKEHOUSE_AUTH__PUBLIC_HEALTH": False,
                    "LAKEHOUSE_AUTH__PUBLIC_PROBES": False,
                }
            },
            "LAKEHOUSE_AUTH__PUBLIC_PROBES=false: the kubelet's probes carry no credentials",
        ),
        (
            {"config": {**TLS_FILES, "LAKEHOUSE_AUTH__PUBLIC_PROBES": "false"}},
            "LAKEHOUSE_AUTH__PUBLIC_PROBES=false: the kubelet's probes carry no credentials",
        ),
        (
            {"config": {"LAKEHOUSE_AUTH__PUBLIC_PROBES": "0"}, "worker": {"enabled": True}},
            "the workers' probes GET /readyz and /healthz without credentials",
        ),
        (
            {
                "config": {"LAKEHOUSE_AUTH__PUBLIC_METRICS": False},
                "serviceMonitor": {"enabled": True},
            },
            "the chart's ServiceMonitor scrapes /metrics without credentials",
        ),
    ],
)
def test_probes_and_scrapes_that_would_need_credentials_fail_at_render(
    values: dict[str, Any], message: str, render: Callable[..., dict[str, str]]
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_the_service_monitor_scrapes_https_when_the_sidecar_has_tls(
    manifests: Callable[..., Docs],
) -> None:
    tls_config = {"ca": {"secret": {"name": "lakehouse-ca", "key": "ca.crt"}}}
    for files in (HTTP_TLS_FILES, tls_in_secret(HTTP_TLS_FILES)):
        values = {"config": files} if "secret" not in files else dict(files)
        values["serviceMonitor"] = {"enabled": True, "tlsConfig": tls_config}
        (endpoint,) = one(manifests(values), "ServiceMonitor")["spec"]["endpoints"]
        assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", tls_config)
    (plain,) = one(manifests({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"][
        "endpoints"
    ]
    assert plain["scheme"] == "http" and "tlsConfig" not in plain


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


def test_the_flight_port_is_opened_only_when_set(
    default_docs: Docs, manifests: Callable[..., Docs], full_values: dict[str, Any]
) -> None:
    assert "LAKEHOUSE_FLIGHT_PORT" not in env_of(one(default_docs, "Deployment"))
    values = {
        **full_values,
        "ports": {**full_values.get("ports", {}), "flight": 50052},
        "secret": {
            **full_values["secret"],
            "keys": {
                **full_values["secret"]["keys"],
                "LAKEHOUSE_AUTH__SIGNING_KEY": "signing-key",
            },
        },
    }
    docs = manifests(values)
    deployment = one(docs, "Deployment")
    assert {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}[
        "flight"
    ] == 50052
    assert env_of(deployment)["LAKEHOUSE_FLIGHT_PORT"] == "50052"
    service = one(docs, "Service")["spec"]
    assert ("flight", 50052, "flight") in [
        (p["name"], p["port"], p["targetPort"]) for p in service["ports"]
    ]
    policy = one(docs, "NetworkPolicy")["spec"]
    assert [r["ports"][0]["port"] for r in policy["ingress"]] == ["grpc", "flight", "http-metrics"]
    # A signing key set explicitly comes from the Secret, like every secret setting (a file).
    assert "LAKEHOUSE_AUTH__SIGNING_KEY_FILE" in env_of(deployment)


def test_settings_come_from_the_configmap_and_secrets_from_files(full_docs: Docs) -> None:
    configmap = one(full_docs, "ConfigMap")
    assert all(key.startswith("LAKEHOUSE_") for key in configmap["data"])
    assert configmap["data"]["LAKEHOUSE_JOBS__IMPORT_PREFIXES"] == '["s3://landing/"]'
    assert configmap["data"]["LAKEHOUSE_INGEST__BUFFER_BYTES"] == "536870912"
    assert configmap["data"]["LAKEHOUSE_CATALOG__URI"].startswith(
        "postgresql+psycopg2://lakehouse@"
    )
    expected_files = {
        "LAKEHOUSE_CATALOG__PASSWORD_FILE": "catalog-password",
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
    assert base64.b64decode(secret["data"]["catalog-password"]).decode() == CATALOG_PASSWORD
    assert list(secret["data"]) == ["catalog-password"]
    env = env_of(one(docs, "Deployment"))
    assert {k: v for k, v in env.items() if k.endswith("_FILE")} == {
        "LAKEHOUSE_CATALOG__PASSWORD_FILE": "/etc/lakehouse/secrets/catalog-password"
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
        "LAKEHOUSE_CATALOG__PASSWORD_FILE": "/etc/lakehouse/secrets/catalog-password"
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "mine"
    assert not any(d["kind"] == "Secret" for d in docs)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def load_rendered(docs: Docs, name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod of Deployment ``name`` would load: ConfigMap + env as the kubelet
    sets them (secret files must exist where the env names them)."""
    configmap = one(docs, "ConfigMap")["data"]
    with monkeypatch.context() as m:
        for key, value in {**configmap, **env_of(one(docs, "Deployment", name))}.items():
            m.setenv(key, value)
        return load_settings()


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
        "catalog-password": CATALOG_PASSWORD,
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
    server = load_rendered(docs, FULLNAME, monkeypatch)
    worker = load_rendered(docs, f"{FULLNAME}-worker", monkeypatch)
    # The password from the Secret went into the URI from the ConfigMap, quoted.
    catalog = make_url(server.catalog_uri)
    assert catalog.password == CATALOG_PASSWORD
    assert (catalog.username, catalog.host, catalog.database) == (
        "lakehouse",
        "postgresql.databases.svc.cluster.local",
        "lakehouse",
    )
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
    assert worker.catalog_uri == server.catalog_uri


def test_default_catalog_is_postgresql_by_name_with_the_password_from_the_secret(
    manifests: Callable[..., Docs], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "catalog-password").write_text(CATALOG_PASSWORD + "\n")
    values = {
        **SHARED_CATALOG,
        "secret": {**SHARED_CATALOG["secret"], "mountPath": str(secret_dir)},
    }
    settings = load_rendered(manifests(values), FULLNAME, monkeypatch)
    catalog = make_url(settings.catalog_uri)
    assert catalog.render_as_string(hide_password=True) == DEFAULT_CATALOG_URI.replace(
        "lakehouse@", "lakehouse:***@"
    )
    assert catalog.password == CATALOG_PASSWORD
    # The job store lives in the catalog's database unless told otherwise: same password.
    assert settings.jobs_database_uri == settings.catalog_uri
    # Several replicas are fine on the default catalog; the try-out is one replica on SQLite.
    assert (
        one(manifests({**SHARED_CATALOG, "replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3
    )
    tryout = load_rendered(manifests(EMBEDDED_CATALOG), FULLNAME, monkeypatch)
    assert tryout.catalog.uri is None and tryout.catalog_uri.startswith("sqlite:///")


def test_settings_that_name_a_file_get_the_mounted_path_from_a_secret(
    manifests: Callable[..., Docs], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls.key_file mapped to a Secret key is the mounted file's path, not a file holding a
    path: <SETTING>=<file>, never <SETTING>_FILE=<file> (which would read the PEM as a path)."""
    secret_dir = tmp_path / "secrets"
    ca = TestCA("chart test CA")
    server_pair = ca.issue("lakehouse.data.svc", server=True)
    (secret_dir).mkdir()
    (secret_dir / "tls.crt").write_bytes(server_pair.cert_pem)
    (secret_dir / "tls.key").write_bytes(server_pair.key_pem)
    (secret_dir / "trino-ca.pem").write_bytes(ca.cert_pem)
    keys = {
        "LAKEHOUSE_TLS__CERT_FILE": "tls.crt",
        "LAKEHOUSE_TLS__KEY_FILE": "tls.key",
        "LAKEHOUSE_TRINO__CA_FILE": "trino-ca.pem",
    }
    values = {
        "secret": {"existingSecret": "lakehouse-tls", "keys": keys, "mountPath": str(secret_dir)}
    }
    docs = manifests(values)
    env = env_of(one(docs, "Deployment"))
    for setting, key in keys.items():
        assert env[setting] == str(secret_dir / key)
        assert f"{setting}_FILE" not in env
    (secret_dir / "catalog-password").write_text("x\n")  # the default keys are wired as well
    (secret_dir / "s3-access-key-id").write_text("AKIAEXAMPLE\n")
    (secret_dir / "s3-secret-access-key").write_text("not-a-secret\n")
    settings = load_rendered(docs, FULLNAME, monkeypatch)
    assert settings.tls.cert_file == secret_dir / "tls.crt"
    assert settings.trino.ca_file == secret_dir / "trino-ca.pem"
    # The service can use what it was given: a key pair and a CA bundle, not text as a path.
    assert settings.tls.key_file is not None
    load_key_pair(settings.tls.cert_file, settings.tls.key_file)
    assert load_ca_bundle(settings.trino.ca_file).startswith(b"-----BEGIN CERTIFICATE-----")
    # The TLS files came from the Secret, and still switched the probes away from gRPC.
    assert http_probes(container(one(docs, "Deployment"))) == expected_http_probes("HTTP")


def test_the_chart_and_the_service_agree_on_which_settings_name_a_file(chart: Any) -> None:
    key_names = chart.schema["properties"]["secret"]["properties"]["keys"]["propertyNames"]["enum"]
    chart_paths = {name for name in key_names if name.endswith("_FILE")}  # lakehouse.isPathSetting
    service_paths = {
        "LAKEHOUSE_" + name.upper().replace(".", "__") for name in file_setting_names()
    }
    assert chart_paths == service_paths


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
    other_secret = annotations({"secret": {"values": {"catalog-password": CATALOG_PASSWORD + "2"}}})
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
    # External PostgreSQL by DNS name, the password by secret reference.
    assert values["config"]["LAKEHOUSE_CATALOG__URI"] == DEFAULT_CATALOG_URI
    assert make_url(DEFAULT_CATALOG_URI).get_driver_name() == "psycopg2"  # pyiceberg[sql-postgres]
    assert values["secret"]["keys"]["LAKEHOUSE_CATALOG__PASSWORD"] == "catalog-password"
    assert "LAKEHOUSE_CATALOG__URI" not in values["secret"]["keys"]
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
        ({"config": {"LAKEHOUSE_CATALOG__URI": "https://u:p@rest:8181"}}, "LAKEHOUSE_CATALOG__URI"),
        ({"config": {"LAKEHOUSE_CATALOG__PASSWORD": "x"}}, "LAKEHOUSE_CATALOG__PASSWORD"),
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
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)) as exc:
        render(values)
    assert "not-a-password" not in str(exc.value)  # a refused URI is not echoed
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert any(message in error for error in report["errors"]), report


@pytest.mark.parametrize(
    "uri",
    [
        DEFAULT_CATALOG_URI,
        "postgresql+psycopg2://lakehouse@db.example.internal:5432/lakehouse?sslmode=verify-full",
        "postgresql+psycopg2://db:5432/lakehouse",
        "sqlite:////var/lib/lakehouse/catalog.db",
        "https://rest-catalog:8181",
    ],
)
def test_schema_accepts_a_catalog_uri_without_a_password_in_config(
    uri: str, manifests: Callable[..., Docs]
) -> None:
    values: dict[str, Any] = {"config": {"LAKEHOUSE_CATALOG__URI": uri}}
    if uri.startswith("sqlite") or uri.startswith("https"):
        values["secret"] = {"keys": {"LAKEHOUSE_CATALOG__PASSWORD": None}}
    assert one(manifests(values), "ConfigMap")["data"]["LAKEHOUSE_CATALOG__URI"] == uri


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**EMBEDDED_CATALOG, "replicaCount": 3}, "several pods need a shared catalog"),
        ({**EMBEDDED_CATALOG, "worker": {"enabled": True}}, "several pods need a shared catalog"),
        (
            {**EMBEDDED_CATALOG, "autoscaling": {"enabled": True}},
            "several pods need a shared catalog",
        ),
        (
            {
                "config": {"LAKEHOUSE_CATALOG__URI": "sqlite:////var/lib/lakehouse/c.db"},
                "replicaCount": 2,
            },
            "several pods need a shared catalog",
        ),
        ({"secret": {"values": {"trino-password": "x"}}}, "secret.values.trino-password"),
        (
            {"secret": {"existingSecret": "mine", "values": {"catalog-password": "x"}}},
            "only used without secret.existingSecret",
        ),
        (
            {"secret": {"keys": {"LAKEHOUSE_S3__ACCESS_KEY_ID": "catalog-password"}}},
            "two settings map to the same key",
        ),
        (
            {
                "secret": {
                    "existingSecret": "mine",
                    "keys": {"LAKEHOUSE_CATALOG__URI": "catalog-uri"},
                }
            },
            "LAKEHOUSE_CATALOG__URI is set both in config and in secret.keys",
        ),
        (
            {**EMBEDDED_CATALOG, "secret": {"values": {"catalog-password": "x"}}},
            "LAKEHOUSE_CATALOG__PASSWORD is wired but no catalog URI is set",
        ),
        (
            {
                "config": {"LAKEHOUSE_CATALOG__URI": "sqlite:////var/lib/lakehouse/c.db"},
                "secret": {"values": {"catalog-password": "x"}},
            },
            "LAKEHOUSE_CATALOG__PASSWORD is wired but config.LAKEHOUSE_CATALOG__URI is SQLite",
        ),
        (
            {
                "config": {
                    "LAKEHOUSE_CATALOG__TYPE": "rest",
                    "LAKEHOUSE_CATALOG__URI": "https://rest",
                },
                "secret": {"values": {"catalog-password": "x"}},
            },
            "LAKEHOUSE_CATALOG__PASSWORD is wired but the catalog is rest",
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
            if "SecretStr" in str(info.annotation):
                secret_names.add(f"LAKEHOUSE_{field.upper()}")
    assert names >= CHART_MANAGED
    assert secret_names >= SECRET_CAPABLE_IN_CONFIG
    schema = chart.schema
    config_names = set(schema["properties"]["config"]["propertyNames"]["enum"])
    key_names = set(schema["properties"]["secret"]["properties"]["keys"]["propertyNames"]["enum"])
    where = "charts/lakehouse/values.schema.json, properties.%s.propertyNames.enum"
    expected_config = names - CHART_MANAGED - secret_names | SECRET_CAPABLE_IN_CONFIG
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
    assert "WARNING" not in default_notes  # PostgreSQL by default
    assert "reached without a password" in default_notes  # ... but no password value yet
    assert (
        "reached without a password" not in render(SHARED_CATALOG)["lakehouse/templates/NOTES.txt"]
    )
    tryout_notes = render(EMBEDDED_CATALOG)["lakehouse/templates/NOTES.txt"]
    assert "WARNING: no shared catalog is configured" in tryout_notes
    full_notes = render(full_values)["lakehouse/templates/NOTES.txt"]
    assert f"dns:///{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local:{GRPC_PORT}" in full_notes
    assert "round_robin" in full_notes
    assert "WARNING" not in full_notes
    assert "HTTP/2" in (CHART / "values.yaml").read_text()


def test_replicas_need_no_signing_key_and_may_set_one(
    render: Callable[..., dict[str, str]],
) -> None:
    """Pods share the key generated in the job store: no note asks for one; one set explicitly
    goes to the Secret."""
    notes = "lakehouse/templates/NOTES.txt"
    replicas = {**SHARED_CATALOG, "replicaCount": 3}
    assert "signing key" not in render(replicas)[notes].lower()
    shared_key = {
        "replicaCount": 3,
        "secret": {
            "keys": {"LAKEHOUSE_AUTH__SIGNING_KEY": "signing-key"},
            "values": {"catalog-password": CATALOG_PASSWORD, "signing-key": "k" * 32},
        },
    }
    assert "signing-key" in render(shared_key)["lakehouse/templates/secret.yaml"]
