"""Stepwise-GRPO with an SFT auxiliary loss (Mode-Balanced Optimisation): `afrl train rl --config FILE`."""
