"""Tiny random-weight models with an offline tokenizer, for tests and CI smoke runs (milliseconds, no network).

The tokenizer is a byte-level BPE trained on a few sentences at build time, with a ChatML chat template, so the
whole AFRL contract (template, single-token digits, padding) is exercised exactly as with a real model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "what is the population of berlin",
    "Berlin had a population of 3,520,031 registered inhabitants in 2015.",
    "Intent: the user wants a number. Evidence: a quote. Reasoning: it answers. Verdict: 2",
    "running shoes for men size 42, waterproof hiking boots, a phone case for the new model",
    "Query: Document: relevance grade 0 1 2 3 4 irrelevant related highly perfectly relevant",
    "You judge how relevant a passage is to a web search query, on the TREC Deep Learning scale.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def train_bpe_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on `corpus` with the ChatML template and special tokens: any text round-trips
    (byte level), digits stay single tokens unless the corpus merges them, and the AFRL contract works as with
    a hub tokenizer. Used for the test tokenizer and for from-scratch study models (training/rule_lm.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return _fast_tokenizer(tok)


def _fast_tokenizer(tok: Any) -> Any:
    """A transformers tokenizer over a `tokenizers.Tokenizer`, with the AFRL special tokens and ChatML template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        # Without this, a locally built tokenizer returns token_type_ids and `generate` fails (DESIGN.md 9).
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return str(train_bpe_tokenizer(_CORPUS * 4, vocab_size=400).backend_tokenizer.to_str())


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer

    return _fast_tokenizer(Tokenizer.from_str(_tokenizer_json()))


def tiny_config(arch: str, vocab_size: int, num_layers: int = 2) -> Any:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(head_dim=8, **common)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "bert":  # a prefix LM (afrl.prefix_lm): BertLMHeadModel, bidirectional over the prompt
        from transformers import BertConfig

        bert = {k: v for k, v in common.items() if k != "num_key_value_heads"}  # BERT has no grouped KV heads
        # no dropout, like the causal tiny configs: a 32-wide model trained for seconds must learn deterministically
        no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        # 1024 positions (a real BERT has 512): the default token budgets plus this tokenizer's verbose template
        # (177 tokens) must fit, or afrl.scorer refuses the contract
        return BertConfig(**(bert | {"max_position_embeddings": 1024} | no_dropout), is_decoder=True)
    raise ValueError(f"unknown tiny architecture {arch!r}; use 'qwen3', 'llama' or 'bert'")


def build_tiny_model(arch: str = "qwen3", seed: int = 0, num_layers: int = 2) -> tuple[Any, Any]:
    """(model, tokenizer): a random-weight causal LM of the given architecture, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, len(tok), num_layers)
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random init with std 0.02 makes every distribution nearly uniform; larger weights give tests teeth.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.eval()
    return model, tok


def save_tiny_model(path: str | Path, arch: str = "qwen3", seed: int = 0, num_layers: int = 2) -> Path:
    """Write a tiny model folder that every `--model PATH` in the CLI accepts."""
    path = Path(path)
    model, tok = build_tiny_model(arch, seed, num_layers)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
