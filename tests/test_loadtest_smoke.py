"""CI smoke load test: a real `afrl serve` on loopback with a tiny model, a 10 s headless locust run, SLO check.

It checks that the whole path works (server, locust users for /score, /rerank and streamed /explain, CSV and
HTML reports, SLO evaluation), not how fast a tiny random model is: the SLOs are the lenient
`loadtest/slo_smoke.yaml`. Every step is bounded in time; the server is stopped whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loadtest.runner import EXIT_OK, main

pytest.importorskip("service.cli", reason="the service (service/cli.py) is not importable; the smoke run needs it")

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"afrl serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"afrl serve not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path):
    from afrl.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    port = free_port()
    log = tmp_path / "server.log"
    env = dict(os.environ, AFRL_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("AFRL_API_KEY", None)
    # The command the container runs (`afrl serve`), through the module so that no console script is needed.
    cmd = [sys.executable, "-m", "afrl.cli", "serve", "--model", str(model), "--backend", "torch"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_headless_load_test_against_a_live_server(server, tmp_path):
    out = tmp_path / "loadtest"
    args = ["--host", server, "-u", "4", "-t", "10s", "--stop-timeout", "5s", "--grace", "60", "--out", str(out)]
    args += ["--max-docs", "16", "--explain-tokens", "8", "--explain-users", "1"]
    args += ["--slo", str(REPO / "loadtest" / "slo_smoke.yaml")]
    rc = main(args)
    log = (out / "locust.log").read_text() if (out / "locust.log").is_file() else ""
    assert rc == EXIT_OK, log[-3000:]
    assert (out / "report.html").stat().st_size > 1000
    report = json.loads((out / "slo.json").read_text())
    assert report["passed"] is True
    counts = {c["what"]: c["actual"] for c in report["checks"]}
    for entry in ("/score", "/rerank", "/explain [score event]", "/explain [done]"):
        assert counts[f"{entry} requests"] >= 1, entry
    # The service counted the load too: its own metrics saw scored pairs.
    with urllib.request.urlopen(server + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    scored = [ln for ln in metrics.splitlines() if ln.startswith("afrl_pairs_scored_total")]
    assert scored and float(scored[0].split()[-1]) > 0
