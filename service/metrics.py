"""Prometheus metrics, one registry per app so that tests can build several apps in one process.

The names are a contract with the Grafana dashboard (loadtest/, docker): change them only together.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 1 ms to 60 s: CPU scoring lives in the 10 ms - 1 s range, explanations in seconds.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PAIRS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("afrl_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.request_latency = Histogram(
            "afrl_request_latency_seconds", "request latency", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.queue_latency = Histogram(
            "afrl_queue_latency_seconds", "time a pair waits for its batch", buckets=_LATENCY, registry=r
        )
        self.inference_latency = Histogram(
            "afrl_inference_latency_seconds", "forward pass time per batch", buckets=_LATENCY, registry=r
        )
        self.time_to_score = Histogram(
            "afrl_time_to_score_seconds", "/explain: request start to the score event", buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram("afrl_batch_size", "pairs per forward pass", buckets=_PAIRS, registry=r)
        self.batch_tokens = Histogram(
            "afrl_batch_tokens", "padded tokens per forward pass", buckets=_TOKENS, registry=r
        )
        self.queue_depth = Gauge("afrl_queue_depth", "pairs waiting for a batch", registry=r)
        self.pairs_scored = Counter("afrl_pairs_scored", "pairs scored", registry=r)
        self.predicted_grade = Counter(
            "afrl_predicted_grade", "predicted grades (watch for score drift)", ["grade"], registry=r
        )
        self.explanation_tokens = Counter("afrl_explanation_tokens", "explanation tokens generated", registry=r)
        self.inflight = Gauge("afrl_inflight_requests", "HTTP requests being served now", registry=r)
        self.cancelled = Counter(
            "afrl_cancelled",
            "work dropped before or during inference: client_disconnected, deadline or shutdown",
            ["reason"],
            registry=r,
        )
        self.model_pairs = Counter(
            "afrl_model_pairs", "pairs that went through a forward pass (including warm-up)", registry=r
        )
        # padding efficiency = real / padded (rate(real) / rate(padded) in PromQL): the waste length bucketing cuts
        self.real_tokens = Counter(
            "afrl_real_tokens", "prompt tokens computed in forward passes (after any reused prefix)", registry=r
        )
        self.padded_tokens = Counter(
            "afrl_padded_tokens", "tokens computed including padding: pairs x the longest prompt, per pass", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
