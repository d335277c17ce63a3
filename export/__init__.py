"""ONNX export of AFRL models: the sliced scorer graph, the explanation decoder, parity and INT8 gates, runtimes.

`afrl export` (see `export/cli.py`) writes a folder that the service loads without torch through
`export.runtime.OnnxScorer` and `export.runtime.OnnxGenerator`. See `export/README.md`.
"""
