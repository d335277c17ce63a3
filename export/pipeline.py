"""`afrl export` as a library call: model spec in, verified ONNX folder out.

Stages (each logged with its time): load the torch reference scorer; export the sliced scorer; fp32 parity on
the check pairs with both padding sides (fails the export above 1e-4); optional fp16 and INT8 graphs (INT8 only
behind its gate); the KV-cache decoder with a greedy-equality check against transformers (a prefix LM's own
decoder graph, export/prefix_decoder.py, checked against the torch path and removed if it fails); tokenizer;
manifest.

The manifest is written last: a folder whose export failed has no `afrl.json`, so no loader accepts it. When only
the INT8 gate refuses, the fp32 export is complete and kept (its manifest records the refused figures), and the
call still fails so that a pipeline that asked for INT8 notices.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afrl.manifest import MANIFEST_NAME, Manifest
from afrl.prefix_lm import is_prefix_lm
from afrl.scorer import TorchScorer
from export import graphs, parity, prefix_decoder, variants
from export.check_pairs import load_check_pairs
from export.runtime import OnnxGenerator, OnnxPrefixGenerator, make_session, session_grade_logits

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    out: Path
    int8: bool = False
    fp16: bool = False
    check_data: Path | None = None
    max_check_pairs: int | None = 32
    fp32_tolerance: float = parity.FP32_TOLERANCE
    int8_min_agreement: float = parity.INT8_MIN_AGREEMENT
    int8_max_score_delta: float = parity.INT8_MAX_SCORE_DELTA
    int8_per_channel: bool = False
    decoder: bool = True
    decoder_check_tokens: int = 16
    external_data: bool | None = None  # None: automatic, when the weights exceed 2 GB
    overwrite: bool = False
    threads: int | None = None
    opset: int | None = None
    optimize: bool = True  # onnxscript graph optimisation during export (see graphs.export_scorer)
    provenance: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("export: %s ...", name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    log.info("export: %s done in %.1f s", name, timings[name])


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        looks_like_export = (out / graphs.SCORER_FILE).exists() or (out / MANIFEST_NAME).exists()
        if not overwrite:
            raise parity.ExportError(f"{out} is not empty: choose a new --out folder or pass --overwrite")
        if not looks_like_export:
            raise parity.ExportError(f"{out} is not empty and does not look like an AFRL export: not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def ort_logits(path: Path, scorer: TorchScorer, prompts: Sequence[Any], side: str, threads: int | None) -> np.ndarray:
    """Grade logits of a graph through the same padding code the service uses (OnnxScorer)."""
    session = make_session(path, None, threads)
    return session_grade_logits(session, [p.input_ids for p in prompts], scorer.pad_id, side, batch_size=8)


def decoder_matches(scorer: TorchScorer, out: Path, prompt_ids: list[int], tokens: int, threads: int | None) -> bool:
    """Greedy continuation of the ONNX decoder equals transformers' `generate` on the same prompt."""
    import torch

    generator = OnnxGenerator.from_dir(out, threads=threads, verify=False)
    ours = generator.generate(prompt_ids, max_new_tokens=tokens)
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        generated = scorer.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False
        )
    ref = generated[0, len(prompt_ids) :].tolist()
    # the ONNX loop stops at EOS without yielding it; cut transformers' tokens at the same place
    ref = next((ref[:i] for i, t in enumerate(ref) if t in generator.eos_ids), ref)
    if ours != ref:
        log.warning("decoder greedy mismatch: onnx %s vs transformers %s", ours, ref)
    return ours == ref


PREFIX_DECODER_TOLERANCE = 1e-2  # max |logit| difference, ONNX against torch, on the prompt and each greedy step


def prefix_decoder_check(
    scorer: TorchScorer, out: Path, prompts: list[list[int]], tokens: int, threads: int | None
) -> dict[str, Any]:
    """The prefix-LM decoder graph against torch (`afrl.prefix_lm.prompt_pass` / `step_pass`) on real prompts:
    the greedy tokens of both, and the largest logit difference along torch's greedy path."""
    import torch

    from afrl.prefix_lm import end_token_ids, prompt_pass, step_pass

    generator = OnnxPrefixGenerator.from_dir(out, threads=threads, verify=False)
    eos = end_token_ids(scorer.model, scorer.tokenizer)
    equal, worst = True, 0.0
    for ids in prompts:
        ours = generator.generate(ids, max_new_tokens=tokens)
        ref: list[int] = []
        with torch.inference_mode():
            logits, past = prompt_pass(scorer.model, torch.tensor([ids]))
            onnx_logits, state = generator.prefill(ids)
            for _ in range(tokens):
                worst = max(worst, float(np.abs(onnx_logits - logits[0].float().numpy()).max()))
                token = int(logits[0].argmax())
                if token in eos:
                    break
                ref.append(token)
                logits, past = step_pass(scorer.model, torch.tensor([[token]]), past)
                onnx_logits, state = generator.step(token, state)
        if ours != ref:
            log.warning("prefix-LM decoder greedy mismatch: onnx %s vs torch %s", ours, ref)
            equal = False
    return {"greedy_equal_to_torch": equal, "max_logit_diff": worst, "new_tokens": tokens, "prompts": len(prompts)}


def export_scorer_model(scorer: TorchScorer, base_model: str, opts: ExportOptions) -> Manifest:
    """Export a loaded torch scorer into `opts.out`; see the module docstring for the stages."""
    out = Path(opts.out)
    prepare_out_dir(out, opts.overwrite)
    timings: dict[str, float] = {}
    pairs = load_check_pairs(opts.check_data, opts.max_check_pairs)
    prompts = scorer.builder.build_many(pairs)
    extra: dict[str, Any] = {
        "grade_ids": scorer.grade_ids,
        "pad_id": scorer.pad_id,
        "scorers": ["fp32"],
        "graph_optimized_at_export": opts.optimize,
    }

    with stage(f"torch reference on {len(pairs)} check pairs", timings):
        reference = scorer.logits_for_prompts(prompts).numpy()
    with stage("scorer graph (torch.onnx dynamo)", timings):
        scorer_path = out / graphs.SCORER_FILE
        external = graphs.export_scorer(
            scorer.model, scorer.grade_ids, scorer_path, opts.external_data, opts.opset, opts.optimize
        )
        extra["external_data"] = external
    with stage("fp32 parity, left and right padding", timings):
        fp32 = {side: ort_logits(scorer_path, scorer, prompts, side, opts.threads) for side in ("left", "right")}
        fp32_vs_torch = parity.worst(*(parity.compare(reference, x) for x in fp32.values()))
        figures: dict[str, Any] = {"fp32": {**fp32_vs_torch.to_dict(), "padding_sides": ["left", "right"]}}
        log.info("fp32 parity: %s", figures["fp32"])
        parity.check_fp32(fp32_vs_torch, opts.fp32_tolerance)
    if opts.fp16:
        with stage("fp16 graph", timings):
            fp16_path = variants.convert_fp16(scorer_path, out / variants.FP16_FILE)
            fp16_vs_torch = parity.compare(reference, ort_logits(fp16_path, scorer, prompts, "right", opts.threads))
            # recorded, not gated: fp16 is meant for GPUs, where gpu_check.py measures it again
            figures["fp16"] = {**fp16_vs_torch.to_dict(), "measured_on": "CPUExecutionProvider"}
            extra["scorers"].append("fp16")
    quantization = None
    refusal = None
    if opts.int8:
        with stage("int8 dynamic quantisation and gate", timings):
            int8_path = variants.quantize_int8(scorer_path, out / variants.INT8_FILE, opts.int8_per_channel)
            int8 = ort_logits(int8_path, scorer, prompts, "right", opts.threads)
            int8_vs_fp32 = parity.compare(fp32["right"], int8)
            refusal = parity.int8_verdict(int8_vs_fp32, opts.int8_min_agreement, opts.int8_max_score_delta)
            figures["int8"] = {
                **int8_vs_fp32.to_dict(),
                "compared_with": "fp32 onnx",
                "vs_torch": parity.compare(reference, int8).to_dict(),
                "min_agreement": opts.int8_min_agreement,
                "max_score_delta_allowed": opts.int8_max_score_delta,
                "per_channel": opts.int8_per_channel,
                "accepted": refusal is None,
            }
            if refusal is None:
                quantization = "int8-dynamic"
                extra["scorers"].append("int8")
            else:
                for p in out.glob(variants.INT8_FILE + "*"):
                    p.unlink()
    extra["preferred_scorer"] = "int8" if quantization else "fp32"
    prefix_lm = is_prefix_lm(scorer.model)
    decoder_refusal = None
    if opts.decoder and prefix_lm:
        with stage("prefix-LM decoder with KV cache (export/prefix_decoder.py)", timings):
            path = out / graphs.DECODER_DIR / prefix_decoder.DECODER_FILE
            prefix_decoder.export_prefix_decoder(scorer.model, path, prompts[0].input_ids, opts.opset)
            extra["decoder"] = f"{graphs.DECODER_DIR}/{prefix_decoder.DECODER_FILE}"
    elif opts.decoder:
        with stage("decoder with KV cache (optimum text-generation-with-past)", timings):
            graphs.export_decoder(scorer.model, out / graphs.DECODER_DIR, opts.opset)
            extra["decoder"] = f"{graphs.DECODER_DIR}/{graphs.DECODER_FILE}"
    scorer.tokenizer.save_pretrained(out)
    if opts.decoder and opts.decoder_check_tokens:
        with stage("decoder greedy check against transformers", timings):
            tokens = opts.decoder_check_tokens
            if prefix_lm:
                check = prefix_decoder_check(scorer, out, [p.input_ids for p in prompts[:2]], tokens, opts.threads)
                figures["decoder"] = check
                if not check["greedy_equal_to_torch"] or check["max_logit_diff"] > PREFIX_DECODER_TOLERANCE:
                    decoder_refusal = (
                        f"the prefix-LM decoder graph does not decode as torch does ({check}); it was removed, "
                        "so this export answers /explain with 501. Report the model and versions; serve the model "
                        "folder with --backend torch for explanations"
                    )
                    shutil.rmtree(out / graphs.DECODER_DIR)
                    extra.pop("decoder")
                    extra["decoder_skipped"] = "prefix-LM decoder failed its check against torch"
            else:
                matched = decoder_matches(scorer, out, prompts[0].input_ids, tokens, opts.threads)
                figures["decoder"] = {"greedy_equal_to_transformers": matched, "new_tokens": tokens}
    manifest = Manifest.for_builder(
        scorer.builder,
        scorer.scale,
        kind="onnx",
        base_model=base_model,
        dtype="float32",
        quantization=quantization,
        parity=figures,
        provenance={"check_data": str(opts.check_data or "builtin"), "timings_s": timings, **opts.provenance},
        extra=extra,
    )
    manifest.write(out)
    if decoder_refusal is not None:
        raise parity.ExportError(decoder_refusal + f". The scorer export in {out} is complete and loadable.")
    if refusal is not None:
        raise parity.ExportError(refusal + f". The fp32 export in {out} is complete and loadable.")
    return manifest


def export_model(spec: str, opts: ExportOptions) -> Manifest:
    """Load `spec` with its contract (afrl.scorer.load_scorer) and export it."""
    from afrl.manifest import Manifest as _Manifest
    from afrl.models import resolve
    from afrl.scorer import load_scorer

    log.info("export: loading %s", spec)
    scorer = load_scorer(spec)
    source = resolve(spec)
    base_model = spec
    if (source / MANIFEST_NAME).is_file():
        base_model = _Manifest.read(source).base_model
    opts.provenance.setdefault("source_model", spec)
    opts.provenance.setdefault("source_path", str(source))
    return export_scorer_model(scorer, base_model, opts)
