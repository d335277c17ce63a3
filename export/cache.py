"""Exports built once and reused: a folder is reused while the stamp beside it matches the one asked for.

A stamp names the source model's files by size and modification time (cheap, and it changes when they do) plus
whatever else the export depends on; the folder's name carries a short hash of it. Used by `afrl bench`
(bench/prepare.py) and by `afrl serve --backend auto` (service/backend_choice.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from afrl.manifest import MANIFEST_NAME

CACHE_VERSION = 1
STAMP = "bench-stamp.json"  # the name bench caches were written with; kept so they stay valid


def source_fingerprint(path: Path) -> dict[str, Any]:
    """Sizes and modification times of the files that define a model."""
    files = {}
    for p in sorted(path.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin", ".model") or p.name == MANIFEST_NAME):
            st = p.stat()
            files[p.name] = [st.st_size, int(st.st_mtime)]
    return {"path": str(path.resolve()), "files": files, "cache_version": CACHE_VERSION}


def cached(folder: Path, stamp: dict[str, Any]) -> bool:
    stamp_file = folder / STAMP
    if not (folder / MANIFEST_NAME).is_file() or not stamp_file.is_file():
        return False
    return bool(json.loads(stamp_file.read_text()) == stamp)


def slug(stamp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]


def write_stamp(folder: Path, stamp: dict[str, Any]) -> None:
    (folder / STAMP).write_text(json.dumps(stamp, indent=2))
