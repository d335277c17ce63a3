"""The AFRL HTTP service: `afrl serve` (FastAPI app factory, micro-batching, torch and onnxruntime backends)."""
