"""Service-level objectives for a load test run, read from YAML and checked against locust's `*_stats.csv`.

The SLO file (see `loadtest/slo.yaml`):

    max_error_rate: 0.01          # failures / requests over every HTTP request of the run
    min_requests: 1               # an endpoint listed below with fewer requests is a miss: no data, no claim
    endpoints:
      /score: {p95_ms: 800, p99_ms: 1500, max_error_rate: 0.01}
      "/explain [score event]": {p95_ms: 1000}

Locust writes one row per entry (`Type`, `Name`, `Request Count`, `Failure Count`, `95%`, `99%`, ...) plus an
`Aggregated` row. Rows of type `SSE` are derived from an HTTP request (the streamed `/explain`), so the overall
error rate counts HTTP rows only; otherwise one broken stream would count twice.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Request type of the entries the locustfile derives from a streamed response (time to an event).
DERIVED_TYPE = "SSE"
_PERCENTILE_COLUMNS = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%"}


@dataclass(frozen=True)
class EndpointSLO:
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float | None = None


@dataclass(frozen=True)
class SLOConfig:
    max_error_rate: float = 0.01
    min_requests: int = 1
    endpoints: dict[str, EndpointSLO] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "SLO config") -> SLOConfig:
        unknown = set(raw) - {"max_error_rate", "min_requests", "endpoints"}
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}; use max_error_rate, min_requests, endpoints")
        endpoints = {}
        for name, limits in (raw.get("endpoints") or {}).items():
            bad = set(limits or {}) - set(EndpointSLO.__dataclass_fields__)
            if bad:
                raise ValueError(
                    f"{source}: endpoint {name!r} has unknown keys {sorted(bad)}; "
                    f"use {sorted(EndpointSLO.__dataclass_fields__)}"
                )
            endpoints[str(name)] = EndpointSLO(**{k: float(v) for k, v in (limits or {}).items()})
        config = cls(
            max_error_rate=float(raw.get("max_error_rate", 0.01)),
            min_requests=int(raw.get("min_requests", 1)),
            endpoints=endpoints,
        )
        if not 0.0 <= config.max_error_rate <= 1.0:
            raise ValueError(f"{source}: max_error_rate must be in [0, 1], got {config.max_error_rate}")
        return config

    @classmethod
    def load(cls, path: str | Path) -> SLOConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SLO config {path} not found (default: loadtest/slo.yaml)")
        # Imported here: the locustfile imports this module inside the locust image, which has no PyYAML.
        import yaml

        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))


@dataclass(frozen=True)
class Row:
    type: str
    name: str
    requests: int
    failures: int
    percentiles_ms: dict[str, float]

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def read_stats(path: str | Path) -> list[Row]:
    """Rows of a locust `*_stats.csv` (the `Aggregated` row included, type empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"locust stats {path} not found: did the run start? (locust writes PREFIX_stats.csv)")
    rows = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            pct = {}
            for key, column in _PERCENTILE_COLUMNS.items():
                value = rec.get(column, "N/A")
                # Locust writes N/A for an entry with no requests.
                pct[key] = math.nan if value in ("N/A", "", None) else float(value)
            rows.append(
                Row(
                    type=rec["Type"],
                    name=rec["Name"],
                    requests=int(rec["Request Count"]),
                    failures=int(rec["Failure Count"]),
                    percentiles_ms=pct,
                )
            )
    return rows


@dataclass
class Check:
    what: str
    limit: float
    actual: float
    ok: bool

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'MISS'} {self.what}: {self.actual:.4g} (limit {self.limit:.4g})"


def check(rows: list[Row], config: SLOConfig) -> list[Check]:
    """Every SLO of `config` against the run's rows; a check with ok=False is a miss."""
    http = [r for r in rows if r.name != "Aggregated" and r.type != DERIVED_TYPE]
    requests = sum(r.requests for r in http)
    failures = sum(r.failures for r in http)
    checks = [Check("requests (all HTTP)", 1, requests, requests >= 1)]
    rate = failures / requests if requests else 1.0
    checks.append(Check("error rate (all HTTP)", config.max_error_rate, rate, rate <= config.max_error_rate))
    by_name: dict[str, Row] = {r.name: r for r in rows if r.name != "Aggregated"}
    for name, slo in config.endpoints.items():
        row = by_name.get(name)
        count = row.requests if row else 0
        checks.append(Check(f"{name} requests", config.min_requests, count, count >= config.min_requests))
        if row is None or row.requests == 0:
            continue
        if slo.max_error_rate is not None:
            ok = row.error_rate <= slo.max_error_rate
            checks.append(Check(f"{name} error rate", slo.max_error_rate, row.error_rate, ok))
        for key in _PERCENTILE_COLUMNS:
            limit = getattr(slo, key)
            if limit is not None:
                actual = row.percentiles_ms[key]
                checks.append(Check(f"{name} {key}", limit, actual, not math.isnan(actual) and actual <= limit))
    return checks
