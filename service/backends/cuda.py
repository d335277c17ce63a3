"""The torch backend on an NVIDIA GPU (torch + transformers only: no onnxruntime-gpu, no TensorRT).

Imported only when the backend's device resolves to CUDA (`--device cuda`, or `auto` where torch sees a GPU), so
a CPU-only process never touches CUDA state; a test checks that a CPU server never imports this module.

What changes on a GPU, and why:
* weights in bf16 where the GPU has it (`--dtype auto`), else fp32 with TF32 matmuls (Ampere and later), which
  keep fp32's range with tensor-core speed; fp16 is not offered (its range overflows some grade logits);
* attention through PyTorch SDPA (flash / memory-efficient kernels), which transformers picks by default for
  the architectures we serve; `runtime_info` reports the implementation in use so /info and the bench show it;
* batches formed by the batcher's token budget as on the CPU (`max_batch_tokens`); a GPU wants far larger
  passes than the CPU defaults (32 pairs): `python -m bench.gpu_torch` measures pairs/s and latency by batch
  size, and service/README.md says which settings to start from;
* prefix reuse (one query, many documents) runs on the GPU like the rest: the KV cache lives on the device.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from afrl.scorer import attention_implementation

log = logging.getLogger(__name__)


def place_on_cuda(model: Any, index: int = 0) -> torch.device:
    """Move the model to GPU `index` for inference; enables TF32 for any fp32 matmul on it."""
    device = torch.device("cuda", index)
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, the public switch for it
    model.to(device)
    log.info(
        "model on %s (%s), attention %s", device, torch.cuda.get_device_name(index), attention_implementation(model)
    )
    return device


def gpu_info(index: int = 0) -> dict[str, Any]:
    """Name and memory of the GPU, for /info."""
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_memory_allocated_mib": round(torch.cuda.memory_allocated(index) / 2**20, 1),
    }
