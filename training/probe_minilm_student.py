"""Probe: can the teacher's own encoder, run as a *causal* LM, become a student that ranks on this CPU?

Why it exists: every SmolLM2 student (6 or 12 layers, LoRA or full, any loss weight) plateaued at DL20 dev
nDCG@10 ~0.21 within the ~16k pairs a CPU session trains, and a linear probe finds no readable relevance in that
base (training/README.md). The MiniLM teacher's encoder (BERT, 6 layers, 384 wide, ~3x fewer FLOPs per pair than
the 6-layer SmolLM2 cut) already knows relevance, but as a bidirectional bi-encoder. transformers'
`BertLMHeadModel` with `is_decoder=True` runs the same weights as a causal LM (causal self-attention, an LM head
tied to the word embeddings, `generate` works), so it could keep the AFRL contract: the grade token's logit at
the last prompt position, then an explanation. This probe trains it on the calibrated pool with the pool
distillation loss (`training.pool_loss`: grade KL + listwise KL over each query's group), for a fixed wall-clock
budget, and reports DL20 dev with the same `evaluate_trec` as `afrl eval`. `--bidirectional` runs the same
weights as a cross-encoder (not causal: the upper reference for what causality costs).

    .venv/bin/python -m training.probe_minilm_student --minutes 12 --out training/results/probe_minilm_causal
    .venv/bin/python -m training.probe_minilm_student --minutes 12 --bidirectional \\
        --out training/results/probe_minilm_bidirectional

The prompt is BERT's pair encoding, `[CLS] query [SEP] passage [SEP]`, read at the final `[SEP]`; it is not the
chat-template prompt of `afrl.contract.PromptBuilder` (BERT's tokenizer has no chat template), so a student of
this kind needs a template before it can ship.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from afrl.contract import GradeResult, GradeScale, result_from_logits
from afrl.hardware import bf16_is_fast
from training.pool_loss import grade_and_list_terms


class MiniLMStudent(torch.nn.Module):
    """BERT as a causal (or bidirectional) LM whose grade logits are read at the last real token."""

    def __init__(self, folder: str, causal: bool, max_query_tokens: int, max_document_tokens: int):
        super().__init__()
        from transformers import AutoTokenizer, BertLMHeadModel

        self.lm = BertLMHeadModel.from_pretrained(folder, is_decoder=causal)
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.grade_ids = [self.tok.convert_tokens_to_ids(str(g)) for g in range(4)]
        self.max_query_tokens = max_query_tokens
        self.max_document_tokens = max_document_tokens

    def encode(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        queries = [self.tok.convert_tokens_to_string(self.tok.tokenize(q)[: self.max_query_tokens]) for q, _ in pairs]
        return dict(
            self.tok(
                queries,
                [d for _, d in pairs],
                truncation="only_second",
                max_length=self.max_query_tokens + self.max_document_tokens + 3,
                padding=True,
                return_tensors="pt",
            )
        )

    def grade_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.lm.bert(**batch)
        hidden = out.last_hidden_state
        pos = batch["attention_mask"].sum(-1) - 1
        h = hidden[torch.arange(hidden.shape[0]), pos]
        h = self.lm.cls.predictions.transform(h)
        decoder = self.lm.cls.predictions.decoder
        return (h @ decoder.weight[self.grade_ids].T + decoder.bias[self.grade_ids]).float()


class ProbeScorer:
    """The `grade_results` interface `training.evaluate.evaluate_trec` accepts (as a calibrated teacher does)."""

    def __init__(self, student: MiniLMStudent, batch_size: int = 32):
        self.student = student
        self.scale = GradeScale()
        self.batch_size = batch_size

    @torch.no_grad()
    def grade_results(self, pairs: Sequence[tuple[str, str]]) -> list[GradeResult]:
        self.student.eval()
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]))  # similar lengths batch together
        out: list[GradeResult | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            logits = self.student.grade_logits(self.student.encode([pairs[i] for i in idx]))
            for i, row in zip(idx, logits, strict=True):
                out[i] = result_from_logits(row.tolist())
        return [r for r in out if r is not None]


def dev_metrics(student: MiniLMStudent, trec_dir: str) -> dict[str, Any]:
    """The headline figures of `evaluate_trec` on the dev split of `trec_dir` (as `afrl eval --split dev`)."""
    from training.data import TrecCollection
    from training.evaluate import evaluate_trec, split_qids

    scorer: Any = ProbeScorer(student)  # duck-typed like training.teacher_eval.CalibratedTeacher
    m = evaluate_trec(scorer, trec_dir, qids=split_qids(TrecCollection.load(trec_dir), "dev"))
    keep = ("queries", "pairs_scored", "ndcg@10", "mrr@10", "map", "bm25_ndcg@10", "accuracy", "macro_f1", "ece")
    return {k: m.get(k) for k in keep}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-dir", default=None, help="MiniLM folder (default: the embedded teacher, unpacked)")
    ap.add_argument("--pool", default="runs/pool_minilm")
    ap.add_argument("--trec-dir", default="../shared/data/trec-dl/dl20")
    ap.add_argument("--bidirectional", action="store_true", help="a cross-encoder (not causal), for reference")
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--batch-groups", type=int, default=2, help="query groups of 8 per step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--listwise-weight", type=float, default=2.0)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every-minutes", type=float, default=None, help="also evaluate dev during training")
    ap.add_argument("--save", default=None, help="save the trained student (save_pretrained) to this folder")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from training.distill_pool import whole_groups
    from training.gpu_loop import budget_cosine
    from training.pools import read_pool

    folder = args.teacher_dir
    if folder is None:
        from afrl.embedded_teacher import embedded_teacher_dir

        folder = str(embedded_teacher_dir())
    student = MiniLMStudent(folder, not args.bidirectional, 32, 128)
    rows = whole_groups(read_pool(args.pool), 8, None)
    per = 8 * args.batch_groups
    batches = [rows[i : i + per] for i in range(0, len(rows) - per + 1, per)]
    autocast = bf16_is_fast()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    budget = 60 * args.minutes
    start = time.time()
    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    step = 0
    paused = 0.0  # seconds spent in dev evaluations, not counted against the training budget
    next_eval = args.eval_every_minutes
    student.train()
    for batch_rows in batches:
        elapsed = time.time() - start - paused
        if next_eval is not None and elapsed > 60 * next_eval:
            t_eval = time.time()
            evals.append({"minutes": elapsed / 60, "pairs": step * per, **dev_metrics(student, args.trec_dir)})
            print(json.dumps(evals[-1]), flush=True)
            student.train()
            paused += time.time() - t_eval
            next_eval += args.eval_every_minutes
        if elapsed > budget:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * budget_cosine(step, len(batches), elapsed, budget)
        enc = student.encode([(r["query"], r["document"]) for r in batch_rows])
        target = torch.tensor([r["probs"] for r in batch_rows], dtype=torch.float32)
        teacher_score = torch.tensor([r["score"] for r in batch_rows], dtype=torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = student.grade_logits(enc)
        kl, lst, spread_t = grade_and_list_terms(logits, target, teacher_score, True, args.tau, 8)
        loss = args.alpha * kl + args.listwise_weight * lst
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 20 == 0:
            spread = spread_t.item()
            entry = {"step": step, "pairs": step * per, "minutes": (time.time() - start) / 60}
            entry |= {"loss": loss.item(), "kl": kl.item(), "list": lst.item(), "spread": spread}
            curve.append(entry)
            print(json.dumps(entry), flush=True)
    train_minutes = (time.time() - start - paused) / 60
    if args.save:
        student.lm.save_pretrained(args.save)
        student.tok.save_pretrained(args.save)
    t0 = time.time()
    metrics = dev_metrics(student, args.trec_dir)
    eval_s = time.time() - t0
    report = {
        "student": "MiniLM-L6 encoder as " + ("a bidirectional cross-encoder" if args.bidirectional else "a causal LM"),
        "steps": step,
        "pairs_trained": step * per,
        "train_minutes": train_minutes,
        "bf16_autocast": autocast,
        "eval_pairs_per_s": metrics.pop("pairs_scored") / eval_s,
        **metrics,
        "settings": vars(args),
        "dev_during_training": evals,
        "curve": curve,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
