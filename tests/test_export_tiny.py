"""Real exports of tiny random-weight Qwen3, Llama and BERT (prefix-LM) models: parity, INT8 gate, manifest
refusal, decoder.

One export per architecture per session (about 10-20 s each, most of it torch.export tracing); the tests read the
folders. The Qwen3 export asks for INT8 with thresholds tightened to zero change, so its gate must refuse; the
Llama export loosens them, so its INT8 graph must be kept and loadable.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import MANIFEST_NAME, Manifest, ManifestError
from afrl.scorer import TorchScorer
from afrl.testing import build_tiny_model
from export.check_pairs import BUILTIN_PAIRS
from export.parity import ExportError
from export.pipeline import ExportOptions, export_scorer_model
from export.runtime import OnnxGenerator, OnnxScorer

pytestmark = pytest.mark.slow  # three real exports, about 40 s together
PAIRS = BUILTIN_PAIRS[:12]


def _torch_scorer(arch):
    model, tok = build_tiny_model(arch)
    return TorchScorer(model, tok, PromptBuilder(tok), GradeScale())


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """{arch: (folder, torch scorer, export error or None)}"""
    folders = {}
    for arch, tight in (("qwen3", True), ("llama", False), ("bert", False)):
        scorer = _torch_scorer(arch)
        out = tmp_path_factory.mktemp(f"onnx-{arch}")
        opts = ExportOptions(
            out=out,
            fp16=arch == "llama",
            int8=arch != "bert",
            max_check_pairs=12,
            int8_min_agreement=1.0 if tight else 0.0,
            int8_max_score_delta=0.0 if tight else 1.0,
            overwrite=True,
            threads=1,
        )
        error = None
        try:
            export_scorer_model(scorer, f"tiny-{arch}", opts)
        except ExportError as e:
            error = e
        folders[arch] = (out, scorer, error)
    return folders


@pytest.mark.parametrize("arch", ["qwen3", "llama", "bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_onnx_scorer_matches_torch(exported, arch, side):
    out, scorer, _ = exported[arch]
    onnx = OnnxScorer.from_dir(out, threads=1, variant="fp32", batch_size=5, padding_side=side)
    ours = np.array([r.probabilities for r in onnx.score(PAIRS)])
    ref = np.array([r.probabilities for r in scorer.score(PAIRS)])
    assert np.abs(ours - ref).max() < 1e-4
    assert len({round(r, 4) for r in ref[:, 0]}) > 1  # the pairs differ, so the comparison has teeth
    manifest = onnx.manifest
    assert manifest.kind == "onnx" and manifest.base_model == f"tiny-{arch}"
    assert manifest.parity["fp32"]["max_abs_prob_diff"] < 1e-4
    assert manifest.parity["fp32"]["padding_sides"] == ["left", "right"]


def test_graph_interface(exported):
    out, scorer, _ = exported["qwen3"]
    onnx = OnnxScorer.from_dir(out, threads=1)
    inputs = {i.name: i.shape for i in onnx.session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert all(isinstance(d, str) for shape in inputs.values() for d in shape)  # dynamic batch and sequence
    (output,) = onnx.session.get_outputs()
    assert output.name == "grade_logits" and output.shape[1] == len(scorer.grade_ids)
    prompts = scorer.builder.build_many(PAIRS[:3])
    logits = onnx.grade_logits([p.input_ids for p in prompts])
    assert logits.shape == (3, 4) and logits.dtype == np.float32


def test_int8_gate_refuses_when_tightened(exported):
    out, _, error = exported["qwen3"]
    assert error is not None and "INT8 refused" in str(error)
    assert "score change" in str(error) and "> allowed 0" in str(error)  # the figures are in the message
    manifest = Manifest.read(out)
    assert manifest.parity["int8"]["accepted"] is False and manifest.quantization is None
    assert manifest.parity["int8"]["max_score_delta"] > 0
    assert not (out / "scorer.int8.onnx").exists() and manifest.extra["preferred_scorer"] == "fp32"
    with pytest.raises(ManifestError, match="no int8 scorer"):
        OnnxScorer.from_dir(out, variant="int8")
    assert OnnxScorer.from_dir(out, threads=1).score(PAIRS[:2])  # the fp32 export stays usable


def test_int8_accepted_is_recorded_and_preferred(exported):
    out, _, error = exported["llama"]
    assert error is None
    manifest = Manifest.read(out)
    assert manifest.quantization == "int8-dynamic" and manifest.parity["int8"]["accepted"] is True
    assert {"scorer.onnx", "scorer.int8.onnx", "scorer.fp16.onnx"} <= set(manifest.files)
    int8 = OnnxScorer.from_dir(out, threads=1)  # preferred variant
    assert int8.session._model_path.endswith("scorer.int8.onnx")
    fp32 = OnnxScorer.from_dir(out, threads=1, variant="fp32")
    a = np.array([r.probabilities for r in int8.score(PAIRS)])
    b = np.array([r.probabilities for r in fp32.score(PAIRS)])
    # Dynamic INT8 scales activations per batch, and onnxruntime picks different int8 kernels per CPU (with or
    # without AVX512-VNNI), so the figure seen here moves with batch composition and machine: 0.078 against a
    # recorded 0.111 on an EPYC without AVX512-BF16, where a 20 % band failed. A factor-2 band still catches a
    # recorded figure that is not this scorer's (zero, or the fp16 one).
    observed, recorded = float(np.abs(a - b).max()), float(manifest.parity["int8"]["max_abs_prob_diff"])
    assert observed > 0 and recorded / 2 <= observed <= recorded * 2, (observed, recorded)
    fp16 = OnnxScorer.from_dir(out, threads=1, variant="fp16")
    c = np.array([r.probabilities for r in fp16.score(PAIRS)])
    # loose: the tiny model's large random weights make fp16 rounding visible; the default model gives 2.4e-3
    assert np.abs(c - b).max() < 0.1 and manifest.parity["fp16"]["max_abs_prob_diff"] < 0.1


def test_checksum_mismatch_is_refused(exported, tmp_path):
    out = shutil.copytree(exported["qwen3"][0], tmp_path / "copy")
    data = json.loads((out / MANIFEST_NAME).read_text())
    data["files"]["scorer.onnx"] = "0" * 64
    (out / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"scorer\.onnx: sha256 .* differs from the manifest"):
        OnnxScorer.from_dir(out)


def test_corrupted_file_is_refused(exported, tmp_path):
    out = shutil.copytree(exported["qwen3"][0], tmp_path / "copy")
    path = out / "decoder" / "model.onnx"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    for loader in (OnnxScorer.from_dir, OnnxGenerator.from_dir):
        with pytest.raises(ManifestError, match=r"decoder/model\.onnx: sha256 .*re-export or restore"):
            loader(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match=r"tokenizer\.json: missing"):
        OnnxScorer.from_dir(out)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_decoder_greedy_equals_transformers(exported, arch):
    out, scorer, _ = exported[arch]
    generator = OnnxGenerator.from_dir(out, threads=1)
    prompt = scorer.builder.build(*PAIRS[0]).input_ids
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref = scorer.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    ref_new = ref[0, len(prompt) :].tolist()
    ours = generator.generate(prompt, max_new_tokens=24)
    cut = next((i for i, t in enumerate(ref_new) if t in generator.eos_ids), len(ref_new))
    assert ours == ref_new[:cut] and len(ours) > 0
    assert Manifest.read(out).parity["decoder"]["greedy_equal_to_transformers"] is True
    streamed = "".join(generator.generate_stream(prompt, max_new_tokens=24))
    assert streamed == scorer.tokenizer.decode(ours, skip_special_tokens=True)


def test_a_prefix_lm_exports_a_decoder_that_decodes_as_torch_does(exported):
    """The prefix-LM export holds its own decoder graph (export/prefix_decoder.py), checked at export against the
    torch path; loaded, it decodes greedily what `afrl.prefix_lm.greedy_continuation` writes, free and under the
    explanation constraint alike."""
    from afrl.explanation_constraint import ExplanationConstraint, decode_explanation
    from afrl.prefix_lm import end_token_ids, greedy_continuation
    from export.runtime import OnnxPrefixGenerator, load_generator

    out, scorer, error = exported["bert"]
    manifest = Manifest.read(out)
    assert error is None and manifest.extra["decoder"] == "decoder/prefix_lm.onnx"
    check = manifest.parity["decoder"]
    assert check["greedy_equal_to_torch"] is True and check["max_logit_diff"] < 1e-3
    generator = load_generator(out, threads=1)
    assert isinstance(generator, OnnxPrefixGenerator)
    eos = end_token_ids(scorer.model, scorer.tokenizer)
    for query, document in PAIRS[:2]:
        prompt = scorer.builder.build(query, document)
        ids = torch.tensor([prompt.input_ids])
        with torch.inference_mode():
            assert generator.generate(prompt.input_ids, 12) == greedy_continuation(scorer.model, ids, 12, eos)
            torch_constraint = ExplanationConstraint.for_prompt(scorer.tokenizer, prompt, budget=60)
            served = greedy_continuation(scorer.model, ids, 60, eos, scorer.grade_ids, torch_constraint)
        _, state = generator.prefill(prompt.input_ids)
        constraint = ExplanationConstraint.for_prompt(scorer.tokenizer, prompt, budget=60)
        assert list(decode_explanation(served[0], generator.step, state, 60, generator.eos_ids, constraint)) == served


def test_an_export_without_the_decoder_says_so_when_one_is_loaded(tmp_path):
    export_scorer_model(_torch_scorer("bert"), "tiny", ExportOptions(out=tmp_path, threads=1, decoder=False))
    assert "decoder" not in Manifest.read(tmp_path).extra and not (tmp_path / "decoder").exists()
    from export.runtime import load_generator

    with pytest.raises(FileNotFoundError, match="without the decoder"):
        load_generator(tmp_path, threads=1)


def test_export_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_scorer_model(_torch_scorer("qwen3"), "tiny", ExportOptions(out=tmp_path))
    with pytest.raises(ExportError, match="does not look like an AFRL export"):
        export_scorer_model(_torch_scorer("qwen3"), "tiny", ExportOptions(out=tmp_path, overwrite=True))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_untied_head_is_sliced_and_external_data_loads(tmp_path):
    import onnx

    from export.graphs import export_scorer
    from export.runtime import make_session, session_grade_logits

    scorer = _torch_scorer("qwen3")
    model = scorer.model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 1.5)  # untied, different
    path = tmp_path / "scorer.onnx"
    assert export_scorer(model, scorer.grade_ids, path, external_data=True) is True
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    initializers = onnx.load(str(path), load_external_data=False).graph.initializer
    big = [t for t in initializers if tuple(t.dims) == (vocab, hidden)]
    assert len(big) == 1  # the embedding only: the full head is not in the graph
    assert onnx.external_data_helper.uses_external_data(big[0]) and (tmp_path / "scorer.onnx.data").is_file()
    prompts = scorer.builder.build_many(PAIRS)
    ours = session_grade_logits(make_session(path, threads=1), [p.input_ids for p in prompts], scorer.pad_id, "left")
    assert np.abs(ours - scorer.logits_for_prompts(prompts).numpy()).max() < 1e-4


def test_gpu_check_writes_a_report(exported, tmp_path):
    """Without a GPU (as here) every GPU run must be reported as failed with the reason, never as passed on CPU."""
    import onnxruntime as ort

    from export import gpu_check

    out, _, _ = exported["llama"]
    argv = ["--dir", str(out), "--report", str(tmp_path), "--batch", "4", "--repeats", "1", "--decode-tokens", "2"]
    rc = gpu_check.main(argv)
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["runs"]["cpu-fp32"]["ok"] is True
    assert {"cuda-fp32", "cuda-fp16", "tensorrt-fp16", "decoder-cuda"} <= set(report["runs"])
    assert "| cpu-fp32 | True |" in (tmp_path / "gpu_report.md").read_text()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert rc == 1
        assert all("was requested but" in r["error"] for n, r in report["runs"].items() if n != "cpu-fp32")
