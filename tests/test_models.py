import pytest

from afrl.cli import main
from afrl.contract import GradeScale
from afrl.models import ModelNotFoundError, resolve
from afrl.testing import save_tiny_model


def test_local_folder_and_cli_json(tmp_path, capsys):
    import json

    path = save_tiny_model(tmp_path / "tiny")
    assert resolve(str(path)) == path
    assert main(["score", "--model", str(path), "--query", "q", "--document", "d", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"grade", "score", "probabilities"}
    assert len(out["probabilities"]) == 4 and abs(sum(out["probabilities"]) - 1) < 1e-6
    assert out["grade"] == max(range(4), key=out["probabilities"].__getitem__)


def test_hub_id_not_in_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve("someone/not-a-cached-model")


def test_missing_path_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve("./no/such/model")


def test_cli_reports_errors_without_traceback(capsys):
    assert main(["score", "--model", "./no/such/model", "--query", "q", "--document", "d"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_default_base_loads_with_single_token_grades():
    from afrl.models import load_model

    model, tok, _path = load_model("default-base")
    assert model.config.num_hidden_layers == 30
    assert len(GradeScale().token_ids(tok)) == 4
    assert tok.eos_token == "<|im_end|>"
