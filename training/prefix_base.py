"""Write a prefix-LM student base (`afrl.prefix_lm.build_prefix_lm_base`) from a BERT encoder folder.

The encoder is the embedded MiniLM teacher (unpacked and checksum-verified by `afrl.embedded_teacher`) unless
`--encoder` names another folder, such as the bidirectional probe student of `training.probe_minilm_student`
(`--save`), whose trained LM-head transform is then kept:

    .venv/bin/python -m training.prefix_base --out runs/prefix_base_minilm
    .venv/bin/python -m training.prefix_base --encoder runs/probe_minilm_bidirectional_55 --out runs/prefix_base_probe55

The result is what `student_model` of `afrl train distill` takes (training/configs/distill_minilm_prefix.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default=None, help="BERT encoder folder (default: the embedded MiniLM teacher)")
    ap.add_argument("--out", required=True, help="folder to write the prefix-LM base to")
    args = ap.parse_args(argv)
    from afrl.prefix_lm import build_prefix_lm_base

    encoder = args.encoder
    if encoder is None:
        from afrl.embedded_teacher import embedded_teacher_dir

        encoder = str(embedded_teacher_dir())
    if not (Path(encoder) / "config.json").is_file():
        raise SystemExit(f"--encoder {encoder}: no config.json there; pass a BERT encoder folder")
    out = build_prefix_lm_base(encoder, args.out)
    (out / "PREFIX_BASE.json").write_text(json.dumps({"encoder": str(encoder)}, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
