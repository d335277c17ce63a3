"""`AfrlGRPOConfig`: TRL's GRPOConfig plus the data arguments and only the fields Stepwise-GRPO adds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from training.config import AfrlDataArgs
from training.rl.rewards import resolve_weights
from training.rl.schedule import SCHEDULES

ADVANTAGE_MODES = ("stepwise", "completion")


@dataclass
class AfrlGRPOConfig(GRPOConfig, AfrlDataArgs):
    """Stepwise-GRPO with the SFT auxiliary loss: loss = L_RL + mu(t) * L_SFT (see training/rl/trainer.py)."""

    sft_coef: float = field(default=0.0, metadata={"help": "mu at the start: weight of the NLL of the gold targets"})
    sft_coef_schedule: str = field(default="constant", metadata={"help": "mu(t): constant, linear or cosine"})
    sft_coef_final: float | None = field(
        default=None, metadata={"help": "mu at the end for linear / cosine (default: sft_coef, i.e. constant)"}
    )
    step_rewards: dict[str, float] | str | None = field(
        default=None,
        metadata={
            "help": "weights of the reward components (YAML mapping or JSON): grade_exact, grade_distance, "
            "format, evidence, rule, verdict; unnamed ones keep their defaults"
        },
    )
    advantage_mode: str = field(
        default="stepwise",
        metadata={"help": "stepwise: one group-normalised advantage per step; completion: TRL's plain GRPO"},
    )
    kl_coef: float = field(default=0.0, metadata={"help": "weight of the KL to the reference model (TRL's beta)"})
    keep_layers: list[int] | None = field(default=None, metadata={"help": "train a layer subset of the model"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules that get LoRA adapters"},
    )
    lora_layers: list[int] | None = field(default=None, metadata={"help": "layers that get LoRA (default all)"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("set `data` to at least one source (e.g. rules:256:0 or trec:DIR:train)")
        if self.sft_coef_schedule not in SCHEDULES:
            raise ValueError(f"sft_coef_schedule must be one of {', '.join(SCHEDULES)}, got {self.sft_coef_schedule!r}")
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(f"advantage_mode must be one of {', '.join(ADVANTAGE_MODES)}, got {self.advantage_mode!r}")
        if self.sft_coef < 0 or (self.sft_coef_final is not None and self.sft_coef_final < 0):
            raise ValueError("sft_coef and sft_coef_final must be >= 0")
        if self.kl_coef < 0:
            raise ValueError("kl_coef must be >= 0")
        if isinstance(self.step_rewards, str):
            self.step_rewards = json.loads(self.step_rewards)
        self.step_rewards = resolve_weights(self.step_rewards)  # type: ignore[arg-type]
        if self.sft_coef_final is None:
            self.sft_coef_final = self.sft_coef
        self.beta = self.kl_coef
        # TRL turns an unset bf16 on everywhere (emulated and slow on a CPU without AMX / AVX512-BF16), and
        # TrainingArguments refuses bf16 without a GPU unless use_cpu is set: afrl.hardware picks both
        from afrl.hardware import training_precision

        self.bf16, self.use_cpu = training_precision(self.bf16, self.use_cpu or self.no_cuda, fp16=self.fp16)
        super().__post_init__()

    @property
    def weights(self) -> dict[str, float]:
        assert isinstance(self.step_rewards, dict)
        return dict(self.step_rewards)

    def to_jsonable(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            k: v for k, v in asdict(self).items() if v is None or isinstance(v, str | int | float | bool | list | dict)
        }
