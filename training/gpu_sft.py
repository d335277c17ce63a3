"""SFT on a lent accelerator machine: the same targets and losses as `afrl train sft`, in a plain PyTorch loop.

Why it exists: the GPU machine a session may borrow has 15 minutes, no package registry, its own transformers and
no TRL, and the TREC folder does not travel. So `prepare` (run here) writes the training records as JSONL, and
`train` (run there) needs only torch, transformers, peft and the `gguf` reader: it loads the embedded base from
its GGUF file, trains a LoRA adapter on the AFRL targets (`training.targets.build_example`) with the weighted
completion NLL and optional listwise term (`training.losses`), and saves the adapter with a `gpu_run.json` of
its settings and loss curve. `finish` (run here) writes the AFRL manifest next to the adapter, so that
`afrl eval --model DIR` scores it exactly as every other model. Departure from `afrl train sft`: no TRL trainer
(no resume or checkpoints; the run is minutes long), and a wall-clock budget that ends training early.

    python -m training.gpu_sft prepare --out .gpu/data                                        # here
    python -m training.gpu_sft train --gguf FILE --data .gpu/data --out $OUT/adapter --epochs 3   # on the GPU
    python -m training.gpu_sft finish --adapter DIR                                           # here
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TREC = "../shared/data/trec-dl"
SOURCES = [f"trec:{TREC}/dl21", f"trec:{TREC}/dl20:train"]


def prepare(out: Path, sources: list[str], max_records: int | None, balance: bool) -> Path:
    from training.data import write_jsonl
    from training.sources import load_sources, subset

    records = subset(load_sources(sources), max_records, balance_grades=balance)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, out / "train.jsonl")
    (out / "source.json").write_text(json.dumps({"data": sources, "records": len(records), "balance": balance}))
    return out / "train.jsonl"


def train(args: argparse.Namespace) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder
    from afrl.scorer import pad_batch
    from training.data import read_jsonl
    from training.gpu_loop import load_base, run_loop
    from training.losses import completion_nll_and_grade_logits, listwise_grade_loss
    from training.sources import query_groups
    from training.targets import build_example

    start = time.time()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_base(args, torch)
    model.to(device)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets))
    scale = GradeScale()
    grade_ids = scale.token_ids(tok)
    builder = PromptBuilder(tok, DEFAULT_INSTRUCTION, args.max_query_tokens, args.max_document_tokens)
    records = read_jsonl(Path(args.data) / "train.jsonl")
    if args.ranking_weight > 0:  # batches must be one query's documents
        records = query_groups(records, None, args.batch, seed=args.seed)
    rows = [build_example(r, builder, scale, grade_ids) for r in records]
    grades = [r.grade for r in records]
    batches = [list(range(i, min(i + args.batch, len(rows)))) for i in range(0, len(rows), args.batch)]

    def step_loss(idx: list[int]) -> tuple[Any, dict[str, Any]]:
        ids, mask = pad_batch([rows[i]["input_ids"] for i in idx], int(tok.pad_token_id))
        cmask, _ = pad_batch([rows[i]["completion_mask"] for i in idx], 0)
        labels = ids.masked_fill(cmask == 0, -100)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        loss, acc, first = completion_nll_and_grade_logits(model, ids, mask, labels, args.grade_weight)
        rank = torch.zeros((), device=device)
        if args.ranking_weight > 0:
            gold = torch.tensor([grades[i] for i in idx], device=device)
            rank = listwise_grade_loss(first[:, grade_ids], gold)
            loss = loss + args.ranking_weight * rank
        return loss, {"rank": rank, "acc": acc}

    loop = run_loop(model, batches, step_loss, args, device, start)
    out = Path(args.out)
    model.save_pretrained(str(out))
    _to_bf16(out / "adapter_model.safetensors")  # half the size; the LoRA deltas lose nothing that matters
    info = {
        "base": Path(args.gguf).name if args.gguf else str(args.model),
        "records": len(records),
        "steps": loop.steps,
        "planned_steps": loop.planned_steps,
        "stopped": loop.stopped,
        "minutes": (time.time() - start) / 60,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "curve": loop.curve,
    }
    if args.trec_dir:  # score the dev queries here, where it takes seconds, with the same evaluate_trec
        info["eval"] = evaluate_dev(model.merge_and_unload(), tok, builder, args.trec_dir, out / "eval")
    (out / "gpu_run.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def _to_bf16(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def evaluate_dev(model: Any, tok: Any, builder: Any, trec_dir: str, out: Path) -> dict[str, Any]:
    """`afrl eval --split dev` on an in-memory model: metrics.json, report.md and run.trec in `out`."""
    from afrl.contract import GradeScale
    from afrl.scorer import TorchScorer
    from training.data import TrecCollection
    from training.evaluate import evaluate_trec, split_qids, write_report

    model.eval()
    scorer = TorchScorer(model, tok, builder, GradeScale(), batch_size=64)
    qids = split_qids(TrecCollection.load(trec_dir), "dev", 0.2, 0)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_trec(scorer, trec_dir, qids=qids, explain_sample=8, run_out=out / "run.trec")
    metrics["data"] = f"{trec_dir} (dev)"
    write_report(metrics, out)
    keys = ("ndcg@10", "bm25_ndcg@10", "shuffled_ndcg@10", "ndcg@10_judged", "map", "accuracy", "macro_f1", "ece")
    return {k: metrics[k] for k in keys if k in metrics}


def portable_adapter_config(adapter: Path, base: str) -> list[str]:
    """Make a device-written `adapter_config.json` loadable here; returns the fields it had to drop.

    The device saw the GGUF's folder as the base; here the base is `base`. The device's newer peft may write
    fields this peft does not know: they are dropped (and listed in the manifest)."""
    from peft import LoraConfig

    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    dropped = sorted(k for k in config if k not in LoraConfig.__dataclass_fields__ and k != "peft_type")
    config = {k: v for k, v in config.items() if k not in dropped}
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dropped


def finish(adapter: Path, base: str) -> Path:
    """Write the AFRL manifest beside a `train` adapter, so that `afrl eval --model DIR` and `afrl ship` take it."""
    from afrl.contract import DEFAULT_INSTRUCTION, GradeScale, PromptBuilder
    from afrl.manifest import Manifest
    from afrl.models import load_model

    info = json.loads((adapter / "gpu_run.json").read_text())
    settings = info["settings"]
    dropped = portable_adapter_config(adapter, base)
    _, tok, _ = load_model(base)
    builder = PromptBuilder(tok, DEFAULT_INSTRUCTION, settings["max_query_tokens"], settings["max_document_tokens"])
    manifest = Manifest.for_builder(
        builder,
        GradeScale(),
        kind="sft",
        base_model=base,
        dtype="bfloat16-autocast",
        provenance={
            "data": SOURCES,
            "records": info["records"],
            "config": settings,
            "gpu_run": "gpu_run.json",
            "adapter_config_fields_dropped": dropped,
        },
    )
    manifest.write(adapter)
    return adapter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the training records as JSONL (here)")
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", default=SOURCES)
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--balance-grades", action="store_true")
    t = sub.add_parser("train", help="train the LoRA adapter (on the accelerator machine)")
    base = t.add_mutually_exclusive_group(required=True)
    base.add_argument("--gguf", help="the embedded base's GGUF file (the lent machine has no converted copy)")
    base.add_argument("--model", help="a Hugging Face model folder instead")
    t.add_argument("--data", required=True, help="folder written by prepare")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--grade-weight", type=float, default=20.0)
    t.add_argument("--ranking-weight", type=float, default=0.0)
    t.add_argument("--max-query-tokens", type=int, default=64)
    t.add_argument("--max-document-tokens", type=int, default=256)
    t.add_argument("--max-minutes", type=float, default=6.0, help="training-loop wall-clock budget (load excluded)")
    t.add_argument("--log-every", type=int, default=20)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--trec-dir", default=None, help="also evaluate the dev split of this TREC folder (as afrl eval)")
    f = sub.add_parser("finish", help="write the AFRL manifest beside a trained adapter (here)")
    f.add_argument("--adapter", required=True)
    f.add_argument("--base", default="default-base")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        print(prepare(Path(args.out), args.data, args.max_records, args.balance_grades))
    elif args.cmd == "train":
        print(train(args))
    else:
        print(finish(Path(args.adapter), args.base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
