"""`afrl.json`: the manifest written beside every trained or exported model, and verified by every loader.

It records what must match between training and serving (grade scale, chat template and instruction with
their hashes, token budgets), the files with their sha256, dtype / quantisation, parity figures and provenance.
A loader refuses a model whose files or contract differ, and says exactly what differs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from afrl.contract import GradeScale, PromptBuilder, sha256_text

MANIFEST_NAME = "afrl.json"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match the files or the expected contract."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_revision() -> str:
    """The git commit of this code, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class Manifest:
    kind: str  # "base", "sft", "rl", "distill", "onnx", ...
    base_model: str
    grade_scale: dict[str, Any]
    instruction: str
    template: str
    max_query_tokens: int
    max_document_tokens: int
    dtype: str = "float32"
    quantization: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    @property
    def instruction_sha256(self) -> str:
        return sha256_text(self.instruction)

    @property
    def template_sha256(self) -> str:
        return sha256_text(self.template)

    @property
    def scale(self) -> GradeScale:
        return GradeScale.from_dict(self.grade_scale)

    @classmethod
    def for_builder(cls, builder: PromptBuilder, scale: GradeScale, kind: str, base_model: str, **kw: Any) -> Manifest:
        return cls(
            kind=kind,
            base_model=base_model,
            grade_scale=scale.to_dict(),
            instruction=builder.instruction,
            template=builder.render_template(),
            max_query_tokens=builder.max_query_tokens,
            max_document_tokens=builder.max_document_tokens,
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["instruction_sha256"] = self.instruction_sha256
        data["template_sha256"] = self.template_sha256
        return data

    def write(self, directory: str | Path, hash_files: bool = True) -> Path:
        """Write `afrl.json`, hashing every other file in the folder (recursively) unless told not to."""
        directory = Path(directory)
        if hash_files:
            self.files = {
                str(p.relative_to(directory)): sha256_file(p)
                for p in sorted(directory.rglob("*"))
                if p.is_file() and p.name != MANIFEST_NAME and "checkpoint-" not in str(p.relative_to(directory))
            }
        self.provenance.setdefault("code_revision", code_revision())
        self.provenance.setdefault("written_at", datetime.now(UTC).isoformat(timespec="seconds"))
        path = directory / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: every AFRL model folder carries a manifest ({MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON: {e}") from e
        stored = {k: data.pop(k) for k in ("instruction_sha256", "template_sha256") if k in data}
        try:
            manifest = cls(**data)
        except TypeError as e:
            raise ManifestError(f"{path} has unexpected or missing fields: {e}") from e
        if stored.get("instruction_sha256", manifest.instruction_sha256) != manifest.instruction_sha256:
            raise ManifestError(f"{path}: the instruction text does not match its recorded sha256")
        if stored.get("template_sha256", manifest.template_sha256) != manifest.template_sha256:
            raise ManifestError(f"{path}: the template text does not match its recorded sha256")
        if manifest.version != MANIFEST_VERSION:
            raise ManifestError(f"{path}: manifest version {manifest.version}, this code reads {MANIFEST_VERSION}")
        return manifest

    def verify_files(self, directory: str | Path) -> None:
        """Refuse a folder whose files are missing or differ from the recorded sha256."""
        directory = Path(directory)
        problems = []
        for name, expected in self.files.items():
            path = directory / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif (actual := sha256_file(path)) != expected:
                problems.append(f"{name}: sha256 {actual[:12]}... differs from the manifest's {expected[:12]}...")
        if problems:
            raise ManifestError(
                f"{directory} does not match its manifest ({len(problems)} problem(s)): "
                + "; ".join(problems)
                + ". The files were changed or corrupted after export: re-export or restore them."
            )

    def verify_contract(self, scale: GradeScale, builder: PromptBuilder | None = None) -> None:
        """Refuse a model whose grade scale, template or instruction differ from what the caller expects."""
        problems = []
        if self.grade_scale != scale.to_dict():
            problems.append(f"grade scale {self.grade_scale} != expected {scale.to_dict()}")
        if builder is not None:
            if builder.render_template() != self.template:
                problems.append("the tokenizer's rendered chat template differs from the manifest's")
            if (builder.max_query_tokens, builder.max_document_tokens) != (
                self.max_query_tokens,
                self.max_document_tokens,
            ):
                problems.append(
                    f"token budgets {(builder.max_query_tokens, builder.max_document_tokens)} != manifest's "
                    f"{(self.max_query_tokens, self.max_document_tokens)}"
                )
        if problems:
            raise ManifestError("the model does not match the expected AFRL contract: " + "; ".join(problems))


def load_verified(directory: str | Path) -> Manifest:
    """Read a folder's manifest and verify every recorded file's checksum."""
    manifest = Manifest.read(directory)
    manifest.verify_files(directory)
    return manifest


def model_fingerprint(path: Path) -> str:
    """sha256 of the model's manifest, or of its config and weight files when it has none (a plain base).

    The manifest lists every file with its sha256, so its own hash names the model exactly."""
    if (path / MANIFEST_NAME).is_file():
        return sha256_file(path / MANIFEST_NAME)
    names = sorted(p.name for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    return sha256_text(json.dumps({n: sha256_file(path / n) for n in names}))
