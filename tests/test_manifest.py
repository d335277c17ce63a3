import json

import pytest

from afrl.contract import GradeScale, PromptBuilder
from afrl.manifest import Manifest, ManifestError, load_verified
from afrl.testing import tiny_tokenizer


@pytest.fixture
def folder(tmp_path):
    tok = tiny_tokenizer()
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 1000)
    builder = PromptBuilder(tok)
    Manifest.for_builder(builder, GradeScale(), kind="test", base_model="tiny").write(tmp_path)
    return tmp_path, builder


def test_manifest_round_trip_and_verify(folder):
    path, builder = folder
    manifest = load_verified(path)
    assert manifest.files == {"weights.bin": manifest.files["weights.bin"]}
    manifest.verify_contract(GradeScale(), builder)


def test_changed_file_is_refused_with_its_name(folder):
    path, _ = folder
    (path / "weights.bin").write_bytes(b"\x01" * 1000)
    with pytest.raises(ManifestError, match=r"weights\.bin: sha256"):
        load_verified(path)


def test_missing_file_is_refused(folder):
    path, _ = folder
    (path / "weights.bin").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_verified(path)


def test_different_grade_scale_is_refused(folder):
    path, builder = folder
    manifest = Manifest.read(path)
    with pytest.raises(ManifestError, match="grade scale"):
        manifest.verify_contract(GradeScale(names=("no", "yes")), builder)


def test_different_budgets_are_refused(folder):
    path, builder = folder
    builder.max_document_tokens = 7
    with pytest.raises(ManifestError, match="token budgets"):
        Manifest.read(path).verify_contract(GradeScale(), builder)


def test_tampered_instruction_hash_is_refused(folder):
    path, _ = folder
    data = json.loads((path / "afrl.json").read_text())
    data["instruction"] = "something else"
    (path / "afrl.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="instruction"):
        Manifest.read(path)
