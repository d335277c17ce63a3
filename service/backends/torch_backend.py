"""The torch backend: the reference scorer (`afrl.scorer`) plus prefix reuse and streamed explanations.

* Scoring is `afrl.scorer.grade_logits`, the function export and tests check against, so /score equals the
  reference scorer.
* Prefix reuse: when many documents share one query, the prompt up to the document (instruction + query, the
  contract's `query_prefix_len`) is run once with a KV cache; the documents' remaining tokens run as one batch
  over that cache, right-padded, with position ids continuing from the prefix. In fp32 this equals the plain
  path within 1e-4 (a test).
* Explanations: one forward pass over the prompt gives the score (the grade logits at the last position, the
  same numbers as /score) before anything is decoded (a prefix LM, `afrl.prefix_lm`, attends over the whole
  prompt there and gets no prefix reuse); decoding then continues greedily from the argmax grade
  token, one token at a time, checking a stop flag before each step so a disconnected client stops the work;
  the Evidence quote is kept to the passage and the Verdict to the grade (`afrl.explanation_constraint`).
* bf16 on CPUs with AMX or AVX512-BF16 (about 3x faster here), unless the settings say fp32.
* On a GPU (`--device auto` where torch sees one, or `cuda`): service/backends/cuda.py, imported only then.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from afrl.contract import Prompt
from afrl.explanation_constraint import ExplanationConstraint, decode_explanation
from afrl.hardware import cpu_has_native_bf16
from afrl.prefix_lm import end_token_ids, is_prefix_lm, prompt_pass, step_pass
from afrl.scorer import (
    TorchScorer,
    attention_implementation,
    grade_head,
    grade_logits,
    last_real_index,
    pad_batch,
    position_ids_from_mask,
)
from service.backends.base import ExplainEvent, ScoreStep, stream_explanation

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """The device of the `device` setting, "cuda" or "cpu": auto is cuda exactly when torch sees a GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {name!r}: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda, but torch sees no GPU (torch.cuda.is_available() is False: a CPU build of torch, "
            "no driver, or CUDA_VISIBLE_DEVICES empty); use --device cpu or auto"
        )
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """bf16 when asked, or for auto where it is fast on the device the model runs on (a GPU with bf16, a CPU
    with AMX or AVX512-BF16); else fp32. A CPU server on a GPU machine decides by its CPU."""
    if name == "auto":
        fast = bool(torch.cuda.is_bf16_supported()) if device == "cuda" else cpu_has_native_bf16()
        return torch.bfloat16 if fast else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


class TorchBackend:
    name = "torch"
    chosen: str | None = None  # why `--backend auto` picked this backend (service/backend_choice.py)

    def __init__(self, scorer: TorchScorer, model_name: str = "model", manifest: dict[str, Any] | None = None):
        self.scorer = scorer
        self.model = scorer.model
        self.tokenizer = scorer.tokenizer
        self.builder = scorer.builder
        self.scale = scorer.scale
        self.model_name = model_name
        self._manifest = manifest
        self.grade_ids = list(scorer.grade_ids)
        self.eos_ids = end_token_ids(self.model, self.tokenizer)

    @classmethod
    def from_spec(
        cls, spec: str, dtype: str = "auto", threads: int | None = None, device: str = "auto"
    ) -> TorchBackend:
        from afrl.manifest import MANIFEST_NAME, Manifest
        from afrl.models import resolve
        from afrl.scorer import load_scorer

        if threads:
            torch.set_num_threads(threads)
        where = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, where)
        log.info("loading %s with torch (%s on %s, %d threads)", spec, torch_dtype, where, torch.get_num_threads())
        scorer = load_scorer(spec, dtype=torch_dtype)
        if where == "cuda":
            from service.backends.cuda import place_on_cuda

            place_on_cuda(scorer.model)
        path = resolve(spec)
        manifest = Manifest.read(path).to_dict() if (path / MANIFEST_NAME).is_file() else None
        return cls(scorer, model_name=spec, manifest=manifest)

    def manifest(self) -> dict[str, Any]:
        if self._manifest is not None:
            return self._manifest
        from afrl.manifest import Manifest

        data = Manifest.for_builder(self.builder, self.scale, kind="base", base_model=self.model_name).to_dict()
        data["dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def runtime_info(self) -> dict[str, Any]:
        """What /info and the bench report: where the model runs, in which dtype, with which attention."""
        device = self.device
        info: dict[str, Any] = {
            "device": str(device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "attention": attention_implementation(self.model),
            "threads": torch.get_num_threads(),
        }
        if self.chosen:
            info["chosen"] = self.chosen
        if device.type == "cuda":
            from service.backends.cuda import gpu_info

            info.update(gpu_info(device.index or 0))
        return info

    @torch.inference_mode()
    def grade_logits(self, prompts: Sequence[Prompt]) -> np.ndarray:
        ids, mask = pad_batch([p.input_ids for p in prompts], self.scorer.pad_id, "right")
        out = grade_logits(self.model, ids.to(self.device), mask.to(self.device), self.grade_ids)
        return out.cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def grade_logits_shared_prefix(self, prompts: Sequence[Prompt], prefix_len: int) -> np.ndarray | None:
        if is_prefix_lm(self.model):
            return None  # a prefix LM's prompt states depend on the document: nothing before it can be reused
        first = prompts[0].input_ids[:prefix_len]
        if prefix_len < 1 or any(len(p.input_ids) <= prefix_len or p.input_ids[:prefix_len] != first for p in prompts):
            return None  # not a shared prefix (or nothing after it): the caller takes the plain path
        device = self.device
        prefix = torch.tensor([first], dtype=torch.long, device=device)
        cache = self.model.model(input_ids=prefix, use_cache=True).past_key_values
        ids, suffix_mask = pad_batch([p.input_ids[prefix_len:] for p in prompts], self.scorer.pad_id, "right")
        ids, suffix_mask = ids.to(device), suffix_mask.to(device)
        n = len(prompts)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(n)
        mask = torch.cat([torch.ones((n, prefix_len), dtype=torch.long, device=device), suffix_mask], dim=1)
        out = self.model.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=prefix_len + position_ids_from_mask(suffix_mask),
            past_key_values=batch_cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state
        last = hidden[torch.arange(n, device=device), last_real_index(suffix_mask)]
        return (last @ grade_head(self.model, self.grade_ids).T).float().cpu().numpy()

    def explain(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event, grade: int | None = None
    ) -> Iterator[ExplainEvent]:
        """The Backend protocol's explain; `grade` (default: this model's argmax) is the first token written, so
        another scorer's grade can be explained (the onnx backend's lazy explainer)."""
        with torch.inference_mode():
            ids = torch.tensor([prompt.input_ids], dtype=torch.long, device=self.device)
            logits, past = prompt_pass(self.model, ids)
            g = logits[0].float()[self.grade_ids]
            yield ScoreStep(g.cpu().numpy())
            # The first token is the argmax grade, so the explanation always follows the score that was sent; the
            # rest is kept to the contract's shape (afrl.explanation_constraint), as afrl eval decodes.
            first = self.grade_ids[int(g.argmax()) if grade is None else grade]
            constraint = ExplanationConstraint.for_prompt(self.tokenizer, prompt, budget=max_new_tokens)

            def step(token: int, cache: Any) -> tuple[torch.Tensor, Any]:
                out, cache = step_pass(self.model, torch.tensor([[token]], dtype=torch.long, device=self.device), cache)
                return out[0], cache

            tokens = decode_explanation(first, step, past, max_new_tokens, self.eos_ids, constraint)
            yield from stream_explanation(self.tokenizer, tokens, max_new_tokens, stop, constraint)
