"""Training pipeline: data, SFT, Stepwise-GRPO, curriculum, distillation, instruction evolution, evaluation."""
