"""A small causal LM built from scratch for the rule world: the mode-balance study's student (issue 20).

Why from scratch. The study needs an SFT model that knows the tail rules (>= 0.6 accuracy on them) and RL runs
long enough to forget them, at several seeds for every arm, on a 2-core CPU. SmolLM2 cut to 8 layers costs
seconds per step, mostly in its 49k-token output layer; a model whose tokenizer is trained on the rule world's
own text (a byte-level BPE of ~1k tokens, so a record is ~3x fewer tokens) and whose body is 4 layers of 256 is
~50x cheaper per step and learns the rules from its records alone. It is a Qwen3 causal LM like the hub bases, so
SFT, TRL's GRPO, the scorer and `/explain` treat it exactly as one; only its knowledge is the rule world's.

    python -m training.rule_lm --out runs/rule_lm --seed 0 \
        --instruction-file training/configs/study_rules_short_instruction.txt   # tokenizer + random init, seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from training.rule_world import GUIDELINE, generate_records

# Seed of the records the tokenizer is trained on: far from every study seed's train (seed) and dev (10_000 + seed)
# data, and the same for every model, so that seeds vary the weights, not the vocabulary.
TOKENIZER_SEED = 90_000
# The chat template's role lines as the prompt writes them ("\nsystem\n"), so each role is one token.
TEMPLATE_TEXT = "\nsystem\n\nuser\nQuery:\n\nDocument:\n\nassistant\n"


def rule_world_corpus(n_records: int = 4000, instruction: str | None = None) -> list[str]:
    """Text the tokenizer learns its merges from: the guideline, the prompt's labels and seeded records."""
    texts = [GUIDELINE] + [TEMPLATE_TEXT] * 50
    if instruction:
        texts += [instruction] * 50
    for r in generate_records(n_records, seed=TOKENIZER_SEED):
        texts.append(f"Query:\n{r.query}\n\nDocument:\n{r.document}\n{r.grade}\n{r.explanation}")
    return texts


def build_rule_lm(
    seed: int = 0,
    hidden_size: int = 256,
    num_layers: int = 4,
    vocab_size: int = 1024,
    instruction: str | None = None,
    head_dim: int = 64,
) -> tuple[Any, Any]:
    """(model, tokenizer): a random-init Qwen3 causal LM (standard 0.02 init) with a rule-world BPE tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from afrl.testing import train_bpe_tokenizer

    if hidden_size % head_dim:
        raise ValueError(f"hidden_size {hidden_size} must be a multiple of head_dim {head_dim} (whole heads)")
    tok = train_bpe_tokenizer(rule_world_corpus(instruction=instruction), vocab_size)  # the same for every seed
    heads = hidden_size // head_dim
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    return model, tok


def save_rule_lm(out: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write the model folder (config, weights, tokenizer) that `--model PATH` and the study's SFT accept."""
    out = Path(out)
    model, tok = build_rule_lm(seed, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--seed", type=int, default=0, help="weight init seed")
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--instruction-file", help="the instruction the prompts will carry (its words become tokens)")
    args = ap.parse_args(argv)
    instruction = Path(args.instruction_file).read_text().strip() if args.instruction_file else None
    path = save_rule_lm(
        args.out,
        args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        vocab_size=args.vocab_size,
        instruction=instruction,
        head_dim=args.head_dim,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
