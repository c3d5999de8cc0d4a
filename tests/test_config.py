"""Recipes and configuration: validation, overrides, did-you-mean, every shipped recipe loads."""

from pathlib import Path

import pytest

from smolmac.config import field_help, load_recipe, parse_override
from smolmac.errors import UserError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path):
    cfg = load_recipe(path)
    assert cfg.method in ("sft", "pretrain", "dpo", "orpo", "tokenizer")
    assert cfg.name == path.stem


def test_required_recipes_ship():
    names = {p.name for p in RECIPES}
    assert {"sft-lora-smollm2-135m.yaml", "sft-qlora-qwen.yaml", "sft-full-tiny.yaml"} <= names


def test_unknown_key_names_line_and_suggests(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\ntrain:\n  steps: 3\n  learning_rate: 1\n")
    with pytest.raises(UserError, match=r"r.yaml:4: unknown key 'train.learning_rate'"):
        load_recipe(p)
    p.write_text("model: m\ntrian:\n  steps: 3\n")
    with pytest.raises(UserError, match=r"did you mean 'train'"):
        load_recipe(p)


def test_wrong_type_and_choice(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\ntrain:\n  batch_size: many\n")
    with pytest.raises(UserError, match=r"r.yaml:3: 'train.batch_size' must be auto or a number of rows \(>= 1\), not 'many'"):
        load_recipe(p)
    p.write_text("model: m\ndata:\n  train: 5\n")
    with pytest.raises(UserError, match=r"r.yaml:3: 'data.train' must be str or null"):
        load_recipe(p)
    p.write_text("model: m\ntrain:\n  schedule: cosin\n")
    with pytest.raises(UserError, match=r"did you mean 'cosine'"):
        load_recipe(p)


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\ntrain:\n  steps: [1,\n")
    with pytest.raises(UserError, match=r"r.yaml:\d+: this is not valid YAML"):
        load_recipe(p)


def test_overrides_take_precedence_and_coerce(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\ntrain:\n  lr: 1e-3\n  steps: 5\n")
    cfg = load_recipe(p, ["train.lr=1e-4", "lora.targets=[q_proj, v_proj]", "data.valid=0.1"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 5
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.data.valid == 0.1
    assert load_recipe({"model": "m"}, {"train": {"batch_size": 2}}).train.batch_size == 2
    with pytest.raises(UserError, match="unknown key 'train.stepz'"):
        load_recipe(p, ["train.stepz=3"])
    assert parse_override("eval.prompts=[a, b]") == ("eval.prompts", ["a", "b"])


def test_every_field_has_help():
    rows = field_help()
    keys = {r[0] for r in rows}
    for k in ("model", "method", "data.train", "data.valid", "data.format", "data.columns", "lora.rank", "lora.alpha",
              "lora.dropout", "lora.targets", "lora.layers", "lora.dora", "train.steps", "train.epochs",
              "train.batch_size", "train.grad_accum", "train.lr", "train.schedule", "train.warmup",
              "train.max_seq_len", "train.seed", "eval.every", "save.every"):
        assert k in keys
    assert all(r[3] for r in rows)
