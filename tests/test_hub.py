"""Model cards (SPECS §7) and `smolmac upload`: the dry run is offline, the upload path is
exercised with HfApi's network methods recorded (never called for real), the token never leaks,
and each failure is one sentence."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import yaml

import smolmac  # noqa: F401  (BLAS before mlx)
from smolmac.errors import UserError

SECRET = "hf_smolmacTestSecretToken0123456789"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model):
    from test_export import make_run

    from smolmac.export import export_run

    root = tmp_path_factory.mktemp("hub")
    run, _ = make_run(root / "run", tiny_model, {"targets": ["q_proj", "v_proj"], "layers": "all", "dora": False})
    return {"root": root, "run": run, "peft": export_run(run, "peft", root / "peft"), "hf": export_run(run, "hf", root / "hf")}


@pytest.fixture()
def peft_copy(exports, tmp_path):
    return shutil.copytree(exports["peft"], tmp_path / "peft")


@pytest.fixture()
def hub_calls(monkeypatch):
    """Record HfApi.create_repo / upload_folder instead of reaching the network."""
    from huggingface_hub import HfApi, RepoUrl, constants

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw, self.token))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return calls


def test_adapter_card_front_matter_and_body(exports):
    from smolmac.export.card import model_card

    card = (exports["peft"] / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["lora", "sft", "mlx", "smolmac"]
    assert meta["datasets"] == ["acme-org/chat-data"]
    assert "base_model" not in meta  # the base is a local directory: no Hub link
    for text in ("| train_loss | 1.234 |", "| val_loss | 1.5 |", "| learning_rate | 0.0002 |", "AutoPeftModelForCausalLM", "r=4, alpha=12"):
        assert text in card
    # cards and smolmac.json never carry local paths
    assert str(exports["root"]) not in card and str(exports["root"]) not in (exports["peft"] / "smolmac.json").read_text()

    info = json.loads((exports["peft"] / "smolmac.json").read_text())
    info.update(base_model="acme-org/tiny-base", base_model_on_hub=True)
    meta = front_matter(model_card(info, "you/smol-lora"))
    assert (meta["base_model"], meta["base_model_relation"]) == ("acme-org/tiny-base", "adapter")
    assert 'AutoPeftModelForCausalLM.from_pretrained("you/smol-lora")' in model_card(info, "you/smol-lora")


def test_fused_and_from_scratch_cards(exports):
    from smolmac.export.card import model_card

    card = (exports["hf"] / "README.md").read_text()
    assert front_matter(card)["library_name"] == "transformers"
    info = json.loads((exports["hf"] / "smolmac.json").read_text())
    info.update(base_model="acme-org/tiny-base", base_model_on_hub=True)
    card = model_card(info, "you/smol-merged")
    meta = front_matter(card)
    assert (meta["base_model"], meta["base_model_relation"], meta["library_name"]) == ("acme-org/tiny-base", "finetune", "transformers")
    assert 'pipeline("text-generation", model="you/smol-merged")' in card and "mlx_lm.generate --model you/smol-merged" in card
    info.update(base_model=None, base_model_on_hub=False, from_scratch=True, fine_tune="pretrain", method="pretrain", adapter=None)
    meta = front_matter(model_card(info, "you/smol-scratch"))
    assert "base_model" not in meta and "base_model_relation" not in meta and "pretrain" in meta["tags"]


def test_run_metrics_are_the_final_values():
    from smolmac.export.card import run_metrics

    events = [
        {"type": "train", "step": 5, "loss": 2.0, "trained_tokens": 10},
        {"type": "eval", "step": 5, "val_loss": 2.5, "val_ppl": 12.2, "time": 1.0},
        {"type": "train", "step": 10, "loss": 1.0, "trained_tokens": 20},
        {"type": "eval", "step": 10, "val_loss": 1.5, "val_ppl": 4.48, "eval_rewards/accuracies": 0.75, "time": 2.0},
        {"type": "done", "step": 10, "output": "x", "stopped": False, "elapsed_s": 9.5},
    ]
    assert run_metrics(events) == {"train_loss": 1.0, "trained_tokens": 20, "steps": 10, "val_loss": 1.5, "val_ppl": 4.48,
                                   "eval_rewards/accuracies": 0.75, "train_time_s": 9.5}


def test_dry_run_is_offline_and_shows_files_and_card(peft_copy, monkeypatch):
    from huggingface_hub import HfApi

    from smolmac.hub import upload

    def no_network(*a, **k):
        raise AssertionError("dry run reached the network")

    monkeypatch.setattr(HfApi, "create_repo", no_network)
    monkeypatch.setattr(HfApi, "upload_folder", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = (peft_copy / "README.md").read_text()
    lines = []
    assert upload(peft_copy, "you/smol-lora", dry_run=True, on_message=lines.append) is None
    out = "\n".join(lines)
    size = (peft_copy / "adapter_model.safetensors").stat().st_size
    assert "adapter_model.safetensors" in out and "adapter_config.json" in out and f"{size / 1024:.1f} KB" in out
    assert "library_name: peft" in out and 'from_pretrained("you/smol-lora")' in out
    assert (peft_copy / "README.md").read_text() == before


def test_upload_creates_repo_uploads_and_never_leaks_the_token(peft_copy, exports, hub_calls, capsys):
    from smolmac.hub import upload

    lines = []
    url = upload(peft_copy, "you/smol-lora", private=True, message="first adapter", on_message=lines.append)
    assert url == "https://huggingface.co/you/smol-lora"
    (c_name, c_repo, c_kw, c_token), (u_name, u_repo, u_kw, u_token) = hub_calls
    assert (c_name, c_repo, c_kw["private"], c_kw["exist_ok"]) == ("create_repo", "you/smol-lora", True, True)
    assert (u_name, u_repo, u_kw["commit_message"], u_kw["folder_path"]) == ("upload_folder", "you/smol-lora", "first adapter", str(peft_copy))
    assert c_token == u_token == SECRET  # handed to HfApi only
    assert 'from_pretrained("you/smol-lora")' in (peft_copy / "README.md").read_text()
    printed = "\n".join(lines) + capsys.readouterr().out
    assert SECRET not in printed
    for folder in (peft_copy, exports["run"]):
        for f in folder.rglob("*"):
            assert not f.is_file() or SECRET.encode() not in f.read_bytes()


def test_upload_errors(peft_copy, exports, hub_calls, monkeypatch, tmp_path):
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    from smolmac.hub import upload

    with pytest.raises(UserError, match="not a valid Hub repository name"):
        upload(peft_copy, "you/bad name!")
    with pytest.raises(UserError, match="not an export"):
        upload(exports["run"], "you/x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        upload(peft_copy, "you/x")
    monkeypatch.delenv("HF_HUB_OFFLINE")

    httpx = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")

    def unreachable(self, repo_id, **kw):
        raise httpx.ConnectError("name resolution failed", request=request)

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    with pytest.raises(UserError, match="cannot be reached"):
        upload(peft_copy, "you/x")

    def unauthorized(self, repo_id, **kw):
        raise HfHubHTTPError("401 Unauthorized", response=httpx.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", unauthorized)
    with pytest.raises(UserError, match="refused the token") as e:
        upload(peft_copy, "you/x")
    assert SECRET not in str(e.value)

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UserError, match="no Hugging Face token"):
        upload(peft_copy, "you/x")
