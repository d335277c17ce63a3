"""Benchmarks: ratios measured side by side in one run, never timed tests.

`afrl bench [--model PATH|default] [--quick] --json OUT [--markdown BENCHMARKS.md]` measures, on this machine,
answer-first against reason-first scoring, the backends (torch fp32 / bf16, onnxruntime fp32 / INT8), a roofline
fraction, prefix reuse, the HTTP service under load with and without dynamic batching, a Qwen3-0.6B-architecture
scorer, the server's peak memory, the default model's speed against the previous default's (`--compare`), and the
latency of a /rerank of 100 documents through the server. Every figure is a median over repeats after warm-up, and
the JSON describes the machine it was measured on. `bench/gpu.py` runs items 1-4 and 6 on an NVIDIA GPU (CUDA and
TensorRT providers).
"""
