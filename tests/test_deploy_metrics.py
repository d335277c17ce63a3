"""Every metric (and label) the Grafana dashboard and the alert rules query is one the service really exports.

The exported names come from the service's own registry (`service.metrics.Metrics`), not from a list typed here,
so renaming a metric in the service without updating deploy/ fails this test, and so does a typo in a panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

# Series that Prometheus writes itself for every scrape target, with the labels it attaches.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every series the service's registry can expose."""
    metrics_mod = pytest.importorskip("service.metrics", reason="service package not importable")
    from prometheus_client.metrics import MetricWrapperBase

    m = metrics_mod.Metrics()
    labels_of = {
        w._name: set(w._labelnames)  # prometheus_client keeps the declared label names here
        for w in vars(m).values()
        if isinstance(w, MetricWrapperBase)
    }
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""], "summary": ["_sum"]}
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for suffix in suffixes[family.type]:
            out[family.name + suffix] = labels_of[family.name] | ({"le"} if suffix == "_bucket" else set())
    return out


def selectors(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(metric name, matcher label names) of each selector in a PromQL expression, and the grouping labels."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (regexes, Grafana variables)
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery windows, e.g. [$__rate_interval]
    grouping: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        grouping |= {g.strip() for g in clause.split(",") if g.strip()}
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    found = []
    for name, body in re.findall(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}", s):
        found.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))))
    s = re.sub(r"([A-Za-z_:][\w:]*)?\s*\{[^}]*\}", " ", s)
    bare = re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?", s)
    found += [(m.group(1), set()) for m in bare if not m.group(2) and m.group(1) not in PROMQL_WORDS]
    return [(n, labels) for n, labels in found if n], grouping


def problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    found, grouping = selectors(expr)
    out = []
    allowed = set(TARGET_LABELS)
    for name, labels in found:
        if name in PROMETHEUS_SERIES:
            allowed |= labels
            continue
        if name not in known:
            out.append(f"unknown metric {name}")
            continue
        allowed |= known[name]
        bad = labels - known[name] - TARGET_LABELS
        if bad:
            out.append(f"{name} has no label {sorted(bad)}")
    if not found:
        out.append("no metric in expression")
    out += [f"grouping label {g} on none of the metrics" for g in sorted(grouping - allowed)]
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "afrl.json").read_text())
    exprs = [(f"panel {p['title']!r}", t["expr"]) for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
        assert m, f"variable {var['name']}: expected label_values(metric, label), got {var['definition']!r}"
        metric, label = m.groups()
        exprs.append((f"variable {var['name']}", f"sum by ({label}) ({metric})"))
    return exprs


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def test_the_service_exports_what_the_issue_lists():
    known = exported()
    for name in (
        "afrl_requests_total",
        "afrl_request_latency_seconds_bucket",
        "afrl_time_to_score_seconds_bucket",
        "afrl_batch_size_bucket",
        "afrl_queue_depth",
        "afrl_predicted_grade_total",
    ):
        assert name in known
    assert known["afrl_requests_total"] == {"endpoint", "status"}


def test_dashboard_and_alerts_use_only_exported_metrics_and_labels():
    known = exported()
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 15
    report = {where: p for where, expr in exprs if (p := problems(expr, known))}
    assert report == {}


def test_every_exported_metric_is_on_the_dashboard():
    known = exported()
    used = {name for _, expr in dashboard_exprs() for name, _ in selectors(expr)[0]}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in known}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum(rate(afrl_request_total{job=~"$job"}[5m]))', ["unknown metric afrl_request_total"]),
        ('afrl_queue_depth{endpoint="/score"}', ["afrl_queue_depth has no label ['endpoint']"]),
        ("sum by (grade) (afrl_batch_size_count)", ["grouping label grade on none of the metrics"]),
        (
            "histogram_quantile(0.9, sum by (le) (rate(afrl_batch_size[5m])))",
            ["unknown metric afrl_batch_size", "grouping label le on none of the metrics"],
        ),
        ('up{job="afrl"} == 0', []),
        (
            "sum by (job, grade) (rate(afrl_predicted_grade_total[1h])) / ignoring (grade) group_left "
            "sum by (job) (rate(afrl_predicted_grade_total[1h])) > 0.9",
            [],
        ),
    ],
)
def test_the_checker_catches_wrong_names(expr, expected):
    assert problems(expr, exported()) == expected
