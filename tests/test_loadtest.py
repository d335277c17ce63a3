"""Load test pieces that need no server: payloads, SSE parsing, SLO config and checks, the runner's exit codes.

The locustfile itself is loaded by locust in a subprocess (`--list`): importing locust here would monkey-patch
this test process with gevent.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import payloads
from loadtest.runner import EXIT_OK, EXIT_RUN_FAILED, EXIT_SLO_MISS, LOCUSTFILE, main, parse_duration
from loadtest.slo import SLOConfig, check, read_stats
from loadtest.sse import iter_sse

REPO = Path(__file__).resolve().parents[1]

# Columns exactly as locust 2.47 writes them (StatsCSV.requests_csv_columns).
COLUMNS = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
]


def write_stats(path: Path, rows: list[tuple[str, str, int, int, float, float]]) -> Path:
    """A locust stats CSV: rows of (type, name, requests, failures, p95, p99)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for typ, name, n, fails, p95, p99 in rows:
            pct = ["N/A"] * 11 if n == 0 else [p95 / 2, 0, 0, 0, 0, p95, 0, p99, 0, 0, p99]
            w.writerow([typ, name, n, fails, 0, 0, 0, 0, 0, 0, 0, *pct])
    return path


GOOD = [
    ("POST", "/score", 100, 0, 120.0, 300.0),
    ("POST", "/rerank", 50, 0, 150.0, 320.0),
    ("POST", "/explain", 10, 0, 40.0, 60.0),
    ("SSE", "/explain [score event]", 10, 0, 130.0, 200.0),
    ("SSE", "/explain [done]", 10, 0, 2000.0, 2600.0),
    ("", "Aggregated", 180, 0, 300.0, 2600.0),
]

CONFIG = SLOConfig.from_dict(
    {
        "max_error_rate": 0.01,
        "endpoints": {
            "/score": {"p95_ms": 200, "p99_ms": 500},
            "/explain [score event]": {"p95_ms": 200},
            "/explain [done]": {"p99_ms": 5000},
        },
    }
)


def misses(rows, config=CONFIG) -> list[str]:
    return [c.what for c in check(rows, config) if not c.ok]


# -- payloads -------------------------------------------------------------------------------------------------


def test_builtin_sample_when_no_trec_data(tmp_path):
    corpus = payloads.load_corpus(tmp_path / "nowhere")
    assert corpus.source == "built-in sample"
    assert set(corpus.by_query) == set(payloads.SAMPLE)


def test_trec_data_is_used_when_present(tmp_path):
    (tmp_path / "dl20").mkdir()
    (tmp_path / "dl20" / "judged_with_text.tsv").write_text(
        "qid\tquery\tdocid\tlabel\tpassage\n"
        "1\tq one\td1\t2\tfirst passage\n"
        "1\tq one\td2\t0\tsecond passage\n"
        '2\tq "two"\td3\t3\ta passage with "quotes"\n'
    )
    corpus = payloads.load_corpus(tmp_path)
    assert corpus.by_query == {"q one": ["first passage", "second passage"], 'q "two"': ['a passage with "quotes"']}


def test_trec_file_with_wrong_header_is_refused(tmp_path):
    (tmp_path / "dl20").mkdir()
    (tmp_path / "dl20" / "judged_with_text.tsv").write_text("qid\ttext\n1\tx\n")
    with pytest.raises(ValueError, match="missing columns"):
        payloads.load_corpus(tmp_path)


def test_score_bodies_span_one_to_max_documents():
    corpus = payloads.load_corpus(Path("/nonexistent"))
    rng = random.Random(0)
    sizes = [len(payloads.score_body(corpus, rng)["documents"]) for _ in range(2000)]
    assert min(sizes) == 1 and max(sizes) == payloads.MAX_DOCS_PER_REQUEST
    body = payloads.score_body(corpus, rng, max_docs=3)
    assert set(body) == {"query", "documents"} and 1 <= len(body["documents"]) <= 3
    # every document belongs to the query it is sent with
    assert set(body["documents"]) <= set(corpus.by_query[body["query"]])


def test_rerank_and_explain_bodies_match_the_api():
    corpus = payloads.load_corpus(Path("/nonexistent"))
    rng = random.Random(1)
    for _ in range(50):
        body = payloads.rerank_body(corpus, rng, max_docs=8)
        assert 2 <= len(body["documents"]) <= 8 and body["top_n"] == min(10, len(body["documents"]))
    explain = payloads.explain_body(corpus, rng, max_new_tokens=16)
    assert explain["stream"] is True and explain["max_new_tokens"] == 16 and explain["document"]
    assert "max_new_tokens" not in payloads.explain_body(corpus, rng)


def test_payloads_validate_against_the_service_schemas():
    schemas = pytest.importorskip("service.schemas", reason="service package not importable")
    corpus = payloads.load_corpus(Path("/nonexistent"))
    rng = random.Random(2)
    schemas.ScoreRequest.model_validate(payloads.score_body(corpus, rng))
    schemas.RerankRequest.model_validate(payloads.rerank_body(corpus, rng))
    schemas.ExplainRequest.model_validate(payloads.explain_body(corpus, rng, 8))


# -- SSE ------------------------------------------------------------------------------------------------------


def test_iter_sse_parses_events_and_skips_pings():
    stream = [
        b"event: score",
        b'data: {"grade": 2}',
        b"",
        b": ping - keep-alive comment",
        b"",
        b"event: delta\r",
        b'data: {"text": "Intent"}\r',
        b"\r",
        b"data: first",
        b"data: second",
        b"",
        b"event: done",
        b"data: {}",
    ]
    assert list(iter_sse(stream)) == [
        ("score", '{"grade": 2}'),
        ("delta", '{"text": "Intent"}'),
        ("message", "first\nsecond"),
        ("done", "{}"),
    ]


# -- SLO ------------------------------------------------------------------------------------------------------


def test_slo_met_on_a_good_run(tmp_path):
    rows = read_stats(write_stats(tmp_path / "s.csv", GOOD))
    assert misses(rows) == []


def test_p95_and_p99_misses_are_reported_per_endpoint(tmp_path):
    bad = [r if r[1] != "/score" else ("POST", "/score", 100, 0, 250.0, 600.0) for r in GOOD]
    assert misses(read_stats(write_stats(tmp_path / "s.csv", bad))) == ["/score p95_ms", "/score p99_ms"]


def test_error_rate_counts_http_rows_only(tmp_path):
    # 2 failed streams: each shows on the HTTP /explain row and on a derived SSE row; the rate counts them once.
    rows = [
        ("POST", "/score", 98, 0, 100.0, 100.0),
        ("POST", "/explain", 2, 2, 10.0, 10.0),
        ("SSE", "/explain [score event]", 2, 2, 10.0, 10.0),
        ("", "Aggregated", 102, 4, 100.0, 100.0),
    ]
    config = SLOConfig.from_dict({"max_error_rate": 0.02})
    assert misses(read_stats(write_stats(tmp_path / "s.csv", rows)), config) == []
    config = SLOConfig.from_dict({"max_error_rate": 0.019})
    assert misses(read_stats(write_stats(tmp_path / "s.csv", rows)), config) == ["error rate (all HTTP)"]


def test_endpoint_error_rate_and_missing_endpoint_are_misses(tmp_path):
    rows = [("POST", "/score", 10, 1, 100.0, 100.0), ("POST", "/rerank", 0, 0, 0.0, 0.0)]
    config = SLOConfig.from_dict(
        {"max_error_rate": 1.0, "endpoints": {"/score": {"max_error_rate": 0.05}, "/rerank": {}, "/explain": {}}}
    )
    assert misses(read_stats(write_stats(tmp_path / "s.csv", rows)), config) == [
        "/score error rate",
        "/rerank requests",
        "/explain requests",
    ]


def test_a_run_without_requests_is_a_miss(tmp_path):
    rows = [("", "Aggregated", 0, 0, 0.0, 0.0)]
    assert "requests (all HTTP)" in misses(read_stats(write_stats(tmp_path / "s.csv", rows)), SLOConfig())


def test_bad_slo_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        SLOConfig.from_dict({"max_eror_rate": 0.1})
    with pytest.raises(ValueError, match=r"'/score' has unknown keys \['p90_ms'\]"):
        SLOConfig.from_dict({"endpoints": {"/score": {"p90_ms": 1}}})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SLOConfig.from_dict({"max_error_rate": 5})
    with pytest.raises(FileNotFoundError, match="SLO config"):
        SLOConfig.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["slo.yaml", "slo_smoke.yaml"])
def test_shipped_slo_files_load_and_name_every_entry(name):
    config = SLOConfig.load(REPO / "loadtest" / name)
    assert set(config.endpoints) == {"/score", "/rerank", "/explain [score event]", "/explain [done]"}


# -- runner ---------------------------------------------------------------------------------------------------


def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "90s", "2m", "1h30m", "1m5s")] == [90, 90, 120, 5400, 65]
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("ten seconds")


def test_check_only_exit_codes(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text("max_error_rate: 0.01\nendpoints:\n  /score: {p95_ms: 200}\n")
    write_stats(tmp_path / "stats_stats.csv", GOOD)
    assert main(["--check-only", str(tmp_path), "--slo", str(slo)]) == EXIT_OK
    assert '"passed": true' in (tmp_path / "slo.json").read_text()
    slo.write_text("endpoints:\n  /score: {p95_ms: 100}\n")
    assert main(["--check-only", str(tmp_path), "--slo", str(slo)]) == EXIT_SLO_MISS
    assert "MISS /score p95_ms: 120" in capsys.readouterr().out
    assert main(["--check-only", str(tmp_path / "empty"), "--slo", str(slo)]) == EXIT_RUN_FAILED
    slo.write_text("endpoints:\n  /score: {p95: 100}\n")
    assert main(["--check-only", str(tmp_path), "--slo", str(slo)]) == EXIT_RUN_FAILED


def test_runner_reports_a_dead_host_as_a_miss(tmp_path):
    """A real (2 s) locust run against a closed port: locust starts, every request fails, the SLO check fails."""
    out = tmp_path / "run"
    rc = main(["--host", "http://127.0.0.1:9", "-u", "2", "-t", "2s", "--stop-timeout", "1s", "--out", str(out)])
    assert rc == EXIT_SLO_MISS
    assert (out / "stats_stats.csv").is_file() and (out / "report.html").is_file()
    assert "error rate (all HTTP)" in (out / "slo.json").read_text()


def test_locustfile_loads_with_its_users_and_options():
    res = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--afrl-max-docs", "4", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    assert {"ScoreUser", "RerankUser", "ExplainUser"} <= set(res.stdout.split())
