"""Time one LoRA training step of the embedded base in fp32 and bf16 autocast, side by side.

Why it exists: the choice of fp32 on CPUs without AMX rests on this measurement.
    .venv/bin/python -m training.probe_step --layers 30 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30, help="LoRA on the top N layers")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=330)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    from afrl.models import load_model

    model, _, _ = load_model("default-base")
    model.train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    n = model.config.num_hidden_layers
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, layers_to_transform=list(range(n - args.layers, n)))
    model = get_peft_model(model, lora)
    x = torch.randint(100, 40000, (args.batch, args.tokens))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for mode in ("fp32", "bf16"):
        times = []
        for _ in range(args.repeats + 1):  # the first step is warm-up
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        print(f"{mode}: median step {statistics.median(times[1:]):.1f} s ({args.batch} x {args.tokens} tokens)")


if __name__ == "__main__":
    main()
