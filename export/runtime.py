"""Run an exported AFRL folder without torch: `OnnxScorer` (grades), `OnnxGenerator` and `OnnxPrefixGenerator`
(explanations; `load_generator` picks the one the export holds).

All verify the folder's manifest first (every file's sha256 and the contract), so a corrupted or edited export is
refused with a message that names the file, never served. The scorer pads internally and reads the grade logits
that the graph gathers at the last real position. The generators expose `prefill` and `step` over their KV-cache
decoder (optimum's for a causal LM, export/prefix_decoder.py's for a prefix LM): the service decodes through them
under the explanation constraint, and their plain greedy loop streams text deltas and stops at end-of-sequence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afrl.contract import GradeResult, GradeScale, PromptBuilder, result_from_logits
from afrl.detokenize import text_deltas
from afrl.manifest import Manifest, ManifestError, load_verified
from afrl.padding import pad_rows

log = logging.getLogger(__name__)

SCORER_FILES = {"fp32": "scorer.onnx", "int8": "scorer.int8.onnx", "fp16": "scorer.fp16.onnx"}
PREFIX_DECODER_FILE = "prefix_lm.onnx"  # = export/prefix_decoder.DECODER_FILE (that module imports torch)


def make_session(path: Path, providers: Sequence[Any] | None = None, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        # Several processes share the cores; an unpinned session takes them all and they fight.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def session_grade_logits(
    session: Any, input_ids: Sequence[Sequence[int]], pad_id: int, side: str = "right", batch_size: int = 16
) -> np.ndarray:
    """(n, K+1) float32 grade logits from a scorer session; batches are formed in length order (little padding)."""
    if any(len(r) == 0 for r in input_ids):
        raise ValueError("an empty prompt has no position to read the grade from")
    out: np.ndarray | None = None
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_rows([input_ids[i] for i in idx], pad_id, side)
        logits = session.run(["grade_logits"], {"input_ids": ids, "attention_mask": mask})[0]
        if out is None:
            out = np.empty((len(input_ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _verified(path: str | Path, kind: str = "onnx") -> tuple[Path, Manifest]:
    path = Path(path)
    manifest = load_verified(path)
    if manifest.kind != kind:
        raise ManifestError(f"{path} holds a {manifest.kind!r} model, not an ONNX export: run `afrl export` first")
    return path, manifest


class OnnxScorer:
    """Grades (query, document) pairs with `scorer.onnx` (or its INT8 / fp16 variant) under the AFRL contract."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        builder: PromptBuilder,
        scale: GradeScale,
        manifest: Manifest,
        batch_size: int = 16,
        padding_side: str = "right",
        variant: str = "fp32",
    ) -> None:
        self.session = session
        self.variant = variant  # which scorer graph: fp32, int8 or fp16 (SCORER_FILES)
        self.tokenizer = tokenizer
        self.builder = builder
        self.scale = scale
        self.manifest = manifest
        self.grade_ids = scale.token_ids(tokenizer)
        if manifest.extra.get("grade_ids") not in (None, self.grade_ids):
            raise ManifestError(
                f"the tokenizer maps the grades to {self.grade_ids}, the graph was exported for "
                f"{manifest.extra['grade_ids']}: the tokenizer files do not belong to this export"
            )
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self.batch_size = batch_size
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        providers: list | None = None,
        threads: int | None = None,
        variant: str | None = None,
        batch_size: int = 16,
        padding_side: str = "right",
    ) -> OnnxScorer:
        """Load an export folder; `variant` is "fp32", "int8" or "fp16" (default: the manifest's preferred one)."""
        path, manifest = _verified(path)
        variant = variant or manifest.extra.get("preferred_scorer", "fp32")
        if variant not in SCORER_FILES:
            raise ValueError(f"unknown scorer variant {variant!r}; choose one of {', '.join(SCORER_FILES)}")
        graph = path / SCORER_FILES[variant]
        if SCORER_FILES[variant] not in manifest.files:
            raise ManifestError(
                f"{path} has no {variant} scorer ({SCORER_FILES[variant]} is not in its manifest); "
                f"export with --{variant} or pick one of {manifest.extra.get('scorers', ['fp32'])}"
            )
        tokenizer = _load_tokenizer(path)
        builder = PromptBuilder(
            tokenizer,
            instruction=manifest.instruction,
            max_query_tokens=manifest.max_query_tokens,
            max_document_tokens=manifest.max_document_tokens,
        )
        manifest.verify_contract(manifest.scale, builder)
        session = make_session(graph, providers, threads)
        log.info("loaded %s scorer %s on %s", variant, graph, session.get_providers()[0])
        return cls(session, tokenizer, builder, manifest.scale, manifest, batch_size, padding_side, variant)

    def grade_logits(self, input_ids: list[list[int]]) -> np.ndarray:
        """(n, K+1) float32 grade logits of token-id prompts (padded here, to this scorer's side)."""
        return session_grade_logits(self.session, input_ids, self.pad_id, self.padding_side, self.batch_size)

    def score(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[GradeResult]:
        if not pairs:
            return []
        prompts = self.builder.build_many(pairs, instruction)
        logits = self.grade_logits([p.input_ids for p in prompts])
        return [result_from_logits(row.tolist()) for row in logits]

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[tuple[int, float]]:
        """CrossEncoder-style: (index, score) of the documents, best first."""
        results = self.score([(query, d) for d in documents])
        ranked = sorted(enumerate(r.score for r in results), key=lambda x: -x[1])
        return ranked[:top_k] if top_k is not None else ranked


class _GreedyDecoder:
    """What both decoders share: `prefill(prompt ids)` and `step(token, state)`, each (next-token logits (vocab,),
    state), and the plain greedy loop over them (the export's check against transformers, gpu_check). The service
    decodes through `afrl.explanation_constraint.decode_explanation` over the same two calls."""

    def __init__(self, session: Any, tokenizer: Any, eos_ids: set[int], manifest: Manifest | None = None) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.manifest = manifest

    def prefill(self, input_ids: Sequence[int]) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def generate_ids(self, input_ids: Sequence[int], max_new_tokens: int = 128) -> Iterator[int]:
        """Token ids chosen greedily, one by one; the end-of-sequence token ends the stream and is not yielded."""
        if not input_ids:
            raise ValueError("generation needs a non-empty prompt")
        logits, state = self.prefill(input_ids)
        for count in range(max_new_tokens):
            token = int(logits.argmax())
            if token in self.eos_ids:
                return
            yield token
            if count + 1 < max_new_tokens:
                logits, state = self.step(token, state)

    def generate(self, input_ids: Sequence[int], max_new_tokens: int = 128) -> list[int]:
        return list(self.generate_ids(input_ids, max_new_tokens))

    def generate_stream(self, input_ids: list[int], max_new_tokens: int = 128) -> Iterator[str]:
        """Decoded text deltas of the greedy continuation (`afrl.detokenize.text_deltas`: a delta is held back
        while it ends in an incomplete UTF-8 character)."""
        tokens: list[int] = []

        def recorded() -> Iterator[int]:
            for token in self.generate_ids(input_ids, max_new_tokens):
                tokens.append(token)
                yield token

        sent = ""
        for delta in text_deltas(self.tokenizer, recorded()):
            sent += delta
            if delta:
                yield delta
        final = self.tokenizer.decode(tokens, skip_special_tokens=True)  # a tail that never completed, as it is
        if len(final) > len(sent) and final.startswith(sent):
            yield final[len(sent) :]


class OnnxGenerator(_GreedyDecoder):
    """Greedy generation with the KV-cache decoder (`decoder/model.onnx`, optimum's text-generation-with-past)."""

    def __init__(self, session: Any, tokenizer: Any, eos_ids: set[int], manifest: Manifest | None = None) -> None:
        super().__init__(session, tokenizer, eos_ids, manifest)
        self._inputs = {i.name: i for i in session.get_inputs()}
        self._past = [name for name in self._inputs if name.startswith("past_key_values.")]
        self._outputs = [o.name for o in session.get_outputs()]
        if not self._past or "logits" not in self._outputs:
            raise ManifestError("the decoder graph has no KV-cache inputs or no logits output: re-export it")
        first = self._inputs[self._past[0]]
        self._past_dtype = np.float16 if "float16" in first.type else np.float32
        # (kv heads, head dim) from the declared shape [batch, heads, past_len, head_dim]
        self._heads, self._head_dim = int(first.shape[1]), int(first.shape[3])

    @classmethod
    def from_dir(
        cls, path: str | Path, providers: list | None = None, threads: int | None = None, verify: bool = True
    ) -> OnnxGenerator:
        path = Path(path)
        manifest = _verified(path)[1] if verify else None
        decoder = path / "decoder"
        if not (decoder / "model.onnx").is_file():
            raise FileNotFoundError(f"{decoder}/model.onnx not found: the export was made without the decoder")
        tokenizer = _load_tokenizer(path)
        eos: set[int] = set()
        gen_config = decoder / "generation_config.json"
        if gen_config.is_file():
            value = json.loads(gen_config.read_text()).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        session = make_session(decoder / "model.onnx", providers, threads)
        return cls(session, tokenizer, eos, manifest)

    def _run(self, ids: np.ndarray, past: dict[str, np.ndarray], length: int) -> tuple[np.ndarray, Any]:
        step = ids.shape[1]
        feeds: dict[str, np.ndarray] = {
            "input_ids": ids,
            "attention_mask": np.ones((1, length + step), dtype=np.int64),
            **past,
        }
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(length, length + step, dtype=np.int64)[None]
        outputs = dict(zip(self._outputs, self.session.run(self._outputs, feeds), strict=True))
        present = {name: outputs[name.replace("past_key_values.", "present.")] for name in self._past}
        return outputs["logits"][0, -1], (present, length + step)

    def prefill(self, input_ids: Sequence[int]) -> tuple[np.ndarray, Any]:
        past = {name: np.zeros((1, self._heads, 0, self._head_dim), self._past_dtype) for name in self._past}
        return self._run(np.asarray([list(input_ids)], dtype=np.int64), past, 0)

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        past, length = state
        return self._run(np.asarray([[token]], dtype=np.int64), past, length)


class OnnxPrefixGenerator(_GreedyDecoder):
    """Greedy generation with a prefix LM's decoder (`decoder/prefix_lm.onnx`, export/prefix_decoder.py): the
    prompt pass is a call with an empty cache, each step a call with one token."""

    def __init__(self, session: Any, tokenizer: Any, eos_ids: set[int], manifest: Manifest | None = None) -> None:
        super().__init__(session, tokenizer, eos_ids, manifest)
        keys = {i.name: i for i in session.get_inputs()}.get("keys")
        if keys is None or [o.name for o in session.get_outputs()] != ["logits", "new_keys", "new_values"]:
            raise ManifestError("the prefix-LM decoder graph has unexpected inputs or outputs: re-export it")
        layers, _, heads, _, head_dim = keys.shape
        self._empty = np.zeros((int(layers), 1, int(heads), 0, int(head_dim)), np.float32)

    @classmethod
    def from_dir(
        cls, path: str | Path, providers: list | None = None, threads: int | None = None, verify: bool = True
    ) -> OnnxPrefixGenerator:
        path = Path(path)
        manifest = _verified(path)[1] if verify else None
        graph = path / "decoder" / PREFIX_DECODER_FILE
        if not graph.is_file():
            raise FileNotFoundError(f"{graph} not found: the export was made without the prefix-LM decoder")
        tokenizer = _load_tokenizer(path)
        eos = {int(i) for i in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)) if i is not None}
        return cls(make_session(graph, providers, threads), tokenizer, eos, manifest)

    def _run(self, ids: np.ndarray, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Any]:
        logits, keys, values = self.session.run(None, {"input_ids": ids, "keys": keys, "values": values})
        return logits[0], (keys, values)

    def prefill(self, input_ids: Sequence[int]) -> tuple[np.ndarray, Any]:
        return self._run(np.asarray([list(input_ids)], dtype=np.int64), self._empty, self._empty)

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        return self._run(np.asarray([[token]], dtype=np.int64), *state)


def has_generator(path: str | Path) -> bool:
    """Whether the export holds an explanation decoder (either kind), without loading it."""
    decoder = Path(path) / "decoder"
    return (decoder / PREFIX_DECODER_FILE).is_file() or (decoder / "model.onnx").is_file()


def load_generator(
    path: str | Path, providers: list | None = None, threads: int | None = None, verify: bool = True
) -> OnnxGenerator | OnnxPrefixGenerator:
    """The export's explanation decoder, whichever kind it holds; FileNotFoundError when it has none."""
    if (Path(path) / "decoder" / PREFIX_DECODER_FILE).is_file():
        return OnnxPrefixGenerator.from_dir(path, providers, threads, verify)
    return OnnxGenerator.from_dir(path, providers, threads, verify)
