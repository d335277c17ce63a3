"""Config dataclasses shared by the training stages, and the YAML + CLI-override parser.

Each stage's config extends TRL's own config with only the fields AFRL adds (STYLE.md, example 3). A YAML file
under `training/configs/` gives the values; `key value` pairs on the command line override them
(`afrl train sft --config training/configs/sft_tiny.yaml --max_steps 3`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig


@dataclass
class AfrlDataArgs:
    """Where the records come from and how the contract is set up (mixed into every stage's config)."""

    model: str = field(
        default="default-base", metadata={"help": "`default`, `default-base`, a folder or a cached hub id"}
    )
    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "training sources: `trec:DIR` (all judged pairs), `trec:DIR:train` (queries outside the dev "
            "split), `jsonl:FILE`, `rules:N` (N synthetic rule-world records)"
        },
    )
    dev_data: list[str] = field(default_factory=list, metadata={"help": "dev sources, same syntax (`trec:DIR:dev`)"})
    dev_fraction: float = field(default=0.2, metadata={"help": "fraction of a TREC folder's queries held out as dev"})
    split_seed: int = field(default=0, metadata={"help": "seed of the query-level split"})
    instruction_file: str | None = field(default=None, metadata={"help": "guideline text file (system message)"})
    max_query_tokens: int = field(default=64, metadata={"help": "query token budget"})
    max_document_tokens: int = field(default=256, metadata={"help": "document token budget"})
    max_train_records: int | None = field(default=None, metadata={"help": "use a seeded subset (quick iterations)"})
    balance_grades: bool = field(
        default=False, metadata={"help": "sample the training records with an equal share per grade"}
    )
    explanations: bool = field(default=True, metadata={"help": "train on grade + explanation (False: grade only)"})


@dataclass
class AfrlSFTConfig(SFTConfig, AfrlDataArgs):
    """SFT on AFRL targets: loss on the assistant part only (grade token, explanation, end of turn)."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules that get LoRA adapters"},
    )
    grade_loss_weight: float = field(
        default=1.0, metadata={"help": "weight of the grade token in the SFT loss (the others weigh 1)"}
    )
    ranking_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a listwise (ListNet) loss over each batch, which then holds one query's documents "
            "(training.sources.query_groups; batch size = group size; single process only)"
        },
    )
    lora_layers: list[int] | None = field(
        default=None, metadata={"help": "layers that get LoRA (default all); top layers only is much cheaper on CPU"}
    )
    keep_layers: list[int] | None = field(default=None, metadata={"help": "train a layer subset of the model"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("set `data` to at least one source (e.g. trec:../shared/data/trec-dl/dl21)")
        if self.lora_r < 0:
            raise ValueError("lora_r must be >= 0")
        if self.grade_loss_weight <= 0:
            raise ValueError("grade_loss_weight must be > 0")
        if self.ranking_loss_weight < 0:
            raise ValueError("ranking_loss_weight must be >= 0")
        if self.ranking_loss_weight > 0 and self.balance_grades:
            raise ValueError(
                "ranking_loss_weight > 0 samples query groups that already mix grades; unset balance_grades"
            )
        if self.ranking_loss_weight > 0 and self.per_device_train_batch_size < 2:
            raise ValueError("ranking_loss_weight > 0 needs per_device_train_batch_size >= 2 (documents per query)")
        self.completion_only_loss = True
        # TRL turns an unset bf16 on everywhere (emulated and slow on a CPU without AMX / AVX512-BF16), and
        # TrainingArguments refuses bf16 without a GPU unless use_cpu is set: afrl.hardware picks both
        from afrl.hardware import training_precision

        self.bf16, self.use_cpu = training_precision(self.bf16, self.use_cpu or self.no_cuda, fp16=self.fp16)
        super().__post_init__()


def parse_config(cls: type, argv: list[str]) -> Any:
    """`--config FILE` plus `--key value` overrides, through TRL's parser (YAML values become defaults)."""
    from trl import TrlParser

    parser = TrlParser(cls)  # type: ignore[arg-type]
    (config,) = parser.parse_args_and_config(argv)
    return config
