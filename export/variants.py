"""Derived scorer graphs: dynamic INT8 (CPU) and fp16 (GPU), each written beside `scorer.onnx`.

INT8 is onnxruntime's dynamic quantisation (int8 weights, activations quantised per batch at run time): no
calibration data, about a quarter of the weight bytes, and on CPUs with VNNI/AMX usually the fastest scorer. It
is only kept when the gate in `export.parity` accepts it. fp16 halves the weights for CUDA; TensorRT instead
builds its fp16 engine from the fp32 graph (`trt_fp16_enable`, see `export.providers`).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

INT8_FILE = "scorer.int8.onnx"
FP16_FILE = "scorer.fp16.onnx"


def uses_external_data(path: Path) -> bool:
    return Path(str(path) + ".data").is_file()


def quantize_int8(source: Path, target: Path, per_channel: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs each skipped node on the root logger at INFO; hush it for the call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            use_external_data_format=uses_external_data(source),
        )
    finally:
        root.setLevel(level)
    return target


def convert_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and arithmetic; inputs and the grade logits stay int64 / float32 so callers do not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))  # loads external data too
    model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    # fp16 is half of fp32, so it needs external data only when the fp32 graph already did (over 2 GB).
    external = uses_external_data(source)
    onnx.save_model(
        model16,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=target.name + ".data",
    )
    return target
