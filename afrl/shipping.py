"""`afrl ship`: copy a trained model into `afrl/shipped/` and make it the newest `--model default`.

Every stage ends here (SFT, RL, distillation), so it lives beside the model resolver rather than in one stage:
    afrl ship runs/sft_smollm2_trec_balanced --name sft-smollm2-trec-balanced
Only the files the manifest lists (plus `afrl.json`) are copied, so checkpoints and caches stay behind; the copy must
verify against its manifest and weigh at most 20 MB (the repo carries adapters, not weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from afrl.manifest import MANIFEST_NAME, load_verified

log = logging.getLogger(__name__)

MAX_SHIPPED_BYTES = 20 * 1024 * 1024


def ship_model(model_dir: str | Path, name: str, shipped_dir: Path | None = None, order: int | None = None) -> Path:
    """Copy `model_dir` to `<shipped_dir>/<name>/` atomically and list it in `index.json` (newest unless `order`)."""
    from afrl import models

    src = Path(model_dir)
    manifest = load_verified(src)
    shipped = shipped_dir or models.SHIPPED_DIR
    files = [*manifest.files, MANIFEST_NAME]
    size = sum((src / f).stat().st_size for f in files)
    if size > MAX_SHIPPED_BYTES:
        raise ValueError(f"{src} weighs {size / 2**20:.1f} MB; a shipped model must be at most 20 MB (use LoRA)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"shipped model name {name!r}: use letters, digits, '.', '_' or '-'")
    target = shipped / name
    tmp = shipped / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for f in files:
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, tmp / f)
    load_verified(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    index_path = shipped / "index.json"
    entries = json.loads(index_path.read_text()) if index_path.is_file() else []
    entries = [e for e in entries if e["path"] != name]
    entries.append(
        {"path": name, "order": order if order is not None else max((e["order"] for e in entries), default=0) + 1}
    )
    index_path.write_text(json.dumps(entries, indent=2) + "\n")
    log.info("shipped %s (%.1f MB) as %s", src, size / 2**20, target)
    return target


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ship",
        help="copy a trained model into afrl/shipped/ and make it `--model default`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", help="a trained model folder with its afrl.json manifest")
    p.add_argument("--name", required=True, help="folder name under afrl/shipped/")
    p.add_argument("--order", type=int, default=None, help="position in index.json (default: newest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(ship_model(args.model_dir, args.name, order=args.order))
    return 0
