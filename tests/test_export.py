"""Export interop: what smolmac exports loads in PEFT, transformers and mlx-lm with the logits
smolmac computes (CPU torch, float32, tiny models built here), and PEFT adapters load back.

The adapters are made the way a run makes them (apply_lora + save_adapter into a run dir), with
lora_b (zero at init) and DoRA magnitudes randomised so that the adapter changes the logits.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import smolmac  # noqa: F401  (BLAS before mlx)
from smolmac.errors import UserError

TOL = 2e-5  # the README quotes this tolerance
IDS = [[1, 5, 9, 20, 33, 7, 100, 200, 41, 3]]
# name: (lora keys, expected PEFT target_modules, expected layers_to_transform)
CASES = {
    "lora-all-linear": ({"targets": "all-linear", "layers": "all", "dora": False},
                        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], None),
    "dora-qv-last1": ({"targets": ["q_proj", "v_proj"], "layers": 1, "dora": True}, ["q_proj", "v_proj"], [1]),
    "dora-all-linear": ({"targets": "all-linear", "layers": "all", "dora": True},
                        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], None),
    "lora-mlp-last1": ({"targets": ["up_proj", "down_proj"], "layers": 1, "dora": False}, ["down_proj", "up_proj"], [1]),
}


def make_run(root, base, lora: dict, seed: int = 1, finished: bool = True):
    """A run dir as smolmac.runs writes it, with a randomised adapter; returns (dir, MLX logits)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from smolmac import events as ev
    from smolmac.config import load_recipe
    from smolmac.lora import apply_lora, save_adapter
    from smolmac.models import load_model

    cfg = load_recipe({"model": str(base), "method": "sft", "data": {"train": "acme-org/chat-data"},
                       "lora": {"rank": 4, "alpha": 12, **lora}, "train": {"steps": 10, "lr": 2e-4}})
    model, _tok, _config, path = load_model(str(base))
    base_logits = np.array(model(mx.array(IDS)))
    adapter_config = apply_lora(model, cfg.lora, seed=0)
    mx.random.seed(seed)
    new = []
    for key, value in tree_flatten(model.trainable_parameters()):
        if key.endswith("lora_b"):
            new.append((key, 0.3 * mx.random.normal(value.shape)))
        elif key.endswith(".m"):
            new.append((key, value * mx.random.uniform(0.5, 1.5, value.shape)))
    model.update(tree_unflatten(new))
    logits = np.array(model(mx.array(IDS)))
    assert np.abs(logits - base_logits).max() > 0.05  # the adapter matters, so the checks mean something

    root.mkdir(parents=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    log = ev.EventLog(root / "events.jsonl")
    log(ev.Start(step=0, total_steps=10, method="sft", model=str(base), trainable_params=1, total_params=2, train_rows=8, valid_rows=2))
    log(ev.Train(step=10, loss=1.234, lr=2e-4, tokens_per_second=100.0, trained_tokens=4096, peak_memory_gb=0.1, elapsed_s=3.0, eta_s=0.0))
    log(ev.Eval(step=10, val_loss=1.5, val_ppl=4.4817))
    if finished:
        extra = {"model": str(base), "base_model_path": str(path), "method": "sft"}
        save_adapter(model, adapter_config, root / "adapter", extra)
        log(ev.Done(step=10, output=str(root / "adapter"), elapsed_s=3.5))
    else:  # stopped before the end: only a checkpoint (trainable weights, adapter key names)
        ckpt = root / "checkpoints" / "step-0000006"
        ckpt.mkdir(parents=True)
        mx.save_safetensors(str(ckpt / "weights.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        (ckpt / "state.json").write_text(json.dumps({"step": 6, "micro": 6, "trained_tokens": 100, "elapsed_s": 1.0}))
    log.close()
    return root, logits


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    """The nano Llama with larger init (std 0.2) so greedy decoding is not one repeated token."""
    from smolmac.models import new_model

    return new_model({"preset": "nano", "initializer_range": 0.2}, tiny_tokenizer, tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory, base):
    """One fake run per case, exported in all three formats."""
    from smolmac.export import export_run

    root = tmp_path_factory.mktemp(request.param)
    run, logits = make_run(root / "run", base, CASES[request.param][0])
    messages = []
    outs = {fmt: export_run(run, fmt, root / fmt, on_message=messages.append) for fmt in ("peft", "hf", "mlx")}
    return {"case": request.param, "run": run, "logits": logits, "messages": messages, **outs}


def torch_logits(model) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float().numpy()


def hf_model(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def test_peft_export_layout_and_logits(exported, base):
    from peft import PeftModel
    from safetensors import safe_open

    lora, targets, layers = CASES[exported["case"]]
    cfg = json.loads((exported["peft"] / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_dora"]) == (4, 12, lora["dora"])
    assert cfg["target_modules"] == targets and cfg["layers_to_transform"] == layers
    assert cfg["base_model_name_or_path"] == str(base)
    with safe_open(str(exported["peft"] / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" if "q_proj" in targets else
                  "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"] == (4, 64)
    if "v_proj" in targets:  # (out, r): 2 kv heads x head_dim 16
        assert shapes["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"] == (32, 4)
    n_layers = 1 if layers else 2
    assert len(shapes) == n_layers * len(targets) * (3 if lora["dora"] else 2)
    if lora["dora"]:
        assert shapes["base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector"] == (64,)
    peft_model = PeftModel.from_pretrained(hf_model(base), str(exported["peft"]))
    assert np.abs(torch_logits(peft_model) - exported["logits"]).max() <= TOL


def test_hf_export_logits_generation_and_merge(exported, base):
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from smolmac.generate import format_prompt, generate, load_for_generation

    out = exported["hf"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"):
        assert (out / name).is_file()
    model = hf_model(out)
    assert np.abs(torch_logits(model) - exported["logits"]).max() <= TOL

    # greedy decoding: transformers on the fused export == smolmac on base + adapter
    mlx_model, tok = load_for_generation(str(base), str(exported["run"]))
    ours = generate(mlx_model, tok, "the cat sat on", max_tokens=12, chat=False)
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    prompt = format_prompt(tok, "the cat sat on", chat=False)
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, do_sample=False, max_new_tokens=12)[0, ids.shape[1]:].tolist()
    assert len(set(gen)) > 2  # not a degenerate repetition
    assert hf_tok.decode(gen, skip_special_tokens=True) == ours

    # PEFT's own merge of our PEFT export == our fused export
    merged = PeftModel.from_pretrained(hf_model(base), str(exported["peft"])).merge_and_unload().state_dict()
    fused = model.state_dict()
    assert merged.keys() == fused.keys()
    assert max((merged[k] - fused[k]).abs().max().item() for k in fused) <= 1e-6


def test_mlx_export_loads_in_mlx_lm(exported, base):
    import mlx.core as mx
    from mlx_lm import load

    cfg = json.loads((exported["mlx"] / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if CASES[exported["case"]][0]["dora"] else "lora")
    model, _ = load(str(base), adapter_path=str(exported["mlx"]))
    assert np.abs(np.array(model(mx.array(IDS))) - exported["logits"]).max() <= 1e-5


def test_peft_import_and_reexport_is_byte_stable(exported, base, tmp_path):
    import mlx.core as mx
    from safetensors.numpy import load_file

    from smolmac.adapters import load_peft_adapter
    from smolmac.export import export_run
    from smolmac.lora import save_adapter, trainable_count
    from smolmac.models import load_model

    model, *_ = load_model(str(base))
    config = load_peft_adapter(model, exported["peft"])
    assert np.abs(np.array(model(mx.array(IDS))) - exported["logits"]).max() <= 1e-5
    tensors = load_file(str(exported["peft"] / "adapter_model.safetensors"))
    # ready to continue training: exactly the adapter is trainable, the base is frozen
    assert trainable_count(model) == sum(t.size for t in tensors.values()) and config["rank"] == 4
    # continue-training path: save in mlx-lm layout, then export to PEFT again
    save_adapter(model, config, tmp_path / "adapter", {"model": str(base), "method": "sft"})
    again = export_run(tmp_path / "adapter", "peft", tmp_path / "peft2")
    first = load_file(str(exported["peft"] / "adapter_model.safetensors"))
    second = load_file(str(again / "adapter_model.safetensors"))
    assert first.keys() == second.keys() == tensors.keys()
    assert all(first[k].dtype == second[k].dtype and first[k].tobytes() == second[k].tobytes() for k in first)
    assert json.loads((again / "adapter_config.json").read_text()) == json.loads((exported["peft"] / "adapter_config.json").read_text())


def test_generation_with_peft_adapter_dir(exported, base):
    """`smolmac generate --adapter PEFT_DIR` (load_for_generation) gives the adapter's output."""
    from smolmac.generate import generate, load_for_generation

    a = generate(*load_for_generation(str(base), str(exported["peft"])), "a dog ran", max_tokens=8, chat=False)
    b = generate(*load_for_generation(str(base), str(exported["run"])), "a dog ran", max_tokens=8, chat=False)
    assert a == b


def test_hf_export_of_quantized_base_keeps_the_fine_tune(tmp_path, base):
    """QLoRA: the fused export is dequantised first (mlx-lm#1172), so transformers reproduces the
    quantised model + adapter that was trained."""
    from mlx_lm import convert

    from smolmac.export import export_run

    qbase = tmp_path / "q4"
    convert(str(base), str(qbase), quantize=True, q_group_size=32, q_bits=4)
    assert "quantization" in json.loads((qbase / "config.json").read_text())
    run, logits = make_run(tmp_path / "run", qbase, {"targets": "all-linear", "layers": "all", "dora": False})
    messages = []
    out = export_run(run, "hf", tmp_path / "hf", dtype="float32", on_message=messages.append)
    assert any("dequantis" in m for m in messages)
    assert "quantization" not in json.loads((out / "config.json").read_text())
    assert np.abs(torch_logits(hf_model(out)) - logits).max() <= TOL


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unfinished_run_exports_last_checkpoint(tmp_path, base):
    from peft import PeftModel

    from smolmac.export import export_run

    run, logits = make_run(tmp_path / "run", base, {"targets": ["q_proj", "v_proj"], "layers": "all", "dora": True}, finished=False)
    messages = []
    out = export_run(run, "peft", tmp_path / "out", on_message=messages.append)
    assert any("not finished" in m and "step 6" in m for m in messages)
    assert "step 6" in (out / "README.md").read_text()
    assert np.abs(torch_logits(PeftModel.from_pretrained(hf_model(base), str(out))) - logits).max() <= TOL


def test_full_fine_tune_exports(tmp_path, base):
    import shutil

    from safetensors import safe_open

    from smolmac.export import export_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(smolmac.load_recipe({"model": str(base), "full": True}).to_yaml())
    shutil.copytree(base, run / "model")
    for fmt in ("peft", "mlx"):
        with pytest.raises(UserError, match="--format hf"):
            export_run(run, fmt, tmp_path / fmt)
    out = export_run(run, "hf", tmp_path / "hf", dtype="float16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == np.float16
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "A full fine-tune of the local model" in card

    # stopped full fine-tune: the checkpoint's weights over the base the run loaded
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from smolmac import events as ev
    from smolmac.models import load_model

    run2 = tmp_path / "run2"
    (run2 / "checkpoints" / "step-0000003").mkdir(parents=True)
    (run2 / "config.yaml").write_text(smolmac.load_recipe({"model": str(base), "full": True}).to_yaml())
    log = ev.EventLog(run2 / "events.jsonl")
    log(ev.Start(step=0, total_steps=9, method="sft", model=str(base), trainable_params=1, total_params=1, train_rows=1, valid_rows=0))
    log.close()
    model, *_ = load_model(str(base))
    weights = {k: v + 0.01 for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(run2 / "checkpoints" / "step-0000003" / "weights.safetensors"), weights)
    messages = []
    out = export_run(run2, "hf", tmp_path / "hf2", on_message=messages.append)
    assert any("step 3" in m for m in messages)
    with safe_open(str(out / "model.safetensors"), "np") as f:
        key = "model.layers.1.mlp.down_proj.weight"
        assert np.array_equal(f.get_tensor(key), np.array(weights[key]))


def test_bad_output_dir_and_dtype(tmp_path, base):
    from safetensors import safe_open

    from smolmac.export import export_run

    run, _ = make_run(tmp_path / "run", base, {"targets": ["q_proj"], "layers": 1, "dora": False})
    with pytest.raises(UserError, match="float32, float16 or bfloat16"):
        export_run(run, "peft", tmp_path / "o", dtype="fp8")
    with pytest.raises(UserError, match="onnx. is not a format; choose peft, hf, mlx"):
        export_run(run, "onnx", tmp_path / "o")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        export_run(run, "peft", busy)
    with pytest.raises(UserError, match=r"busy was not written by `smolmac export`.*will not delete it"):
        export_run(run, "peft", busy, overwrite=True)  # a folder of the user's: never replaced
    assert (busy / "notes.txt").read_text() == "mine"
    first = export_run(run, "peft", tmp_path / "out")
    out = export_run(run, "peft", first, dtype="bfloat16", overwrite=True)  # an earlier export: replaced
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    info = json.loads((out / "smolmac.json").read_text())
    assert info["written_by"] == "smolmac export" and "adapter_model.safetensors" in info["files"]
    (out / "my-eval.txt").write_text("mine")  # the user added a file to the export
    with pytest.raises(UserError, match="holds my-eval.txt, which `smolmac export` did not write"):
        export_run(run, "peft", out, overwrite=True)
    assert (out / "my-eval.txt").read_text() == "mine"
    with pytest.raises(UserError, match="is or contains the run being exported"):
        export_run(run, "peft", tmp_path, overwrite=True)
    with pytest.raises(UserError, match="neither a run directory nor an adapter"):
        (tmp_path / "notes").mkdir()
        export_run(tmp_path / "notes", "peft", tmp_path / "x")
    with pytest.raises(UserError, match="no such directory"):
        export_run(tmp_path / "missing", "peft", tmp_path / "x")


def test_pipeline_dir_exports_its_last_trained_stage(tmp_path, base):
    from safetensors.numpy import load_file

    from smolmac.export import export_run

    pipe = tmp_path / "pipe"
    run, _ = make_run(pipe / "1-sft", base, {"targets": ["q_proj"], "layers": "all", "dora": False})
    (pipe / "0-tokenizer").mkdir()
    (pipe / "0-tokenizer" / "config.yaml").write_text("method: tokenizer\n")
    (pipe / "config.yaml").write_text("stages: [{method: tokenizer}, {method: sft}]\n")
    messages = []
    out = export_run(pipe, "mlx", tmp_path / "out", on_message=messages.append)
    assert any("pipeline" in m and "1-sft" in m for m in messages)
    ours, theirs = load_file(str(out / "adapters.safetensors")), load_file(str(run / "adapter" / "adapters.safetensors"))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_overwrite_never_deletes_the_working_dir_or_its_parent(tmp_path, base, monkeypatch, capsys):
    """Issue 14.1, exactly: run from proj/sub, `smolmac export RUN --to .. --overwrite` deleted
    proj/notes.txt and the current folder, then failed. Now it is refused and nothing changes."""
    from smolmac.cli import main
    from smolmac.export import export_run

    run, _ = make_run(tmp_path / "run", base, {"targets": ["q_proj"], "layers": 1, "dora": False})
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "notes.txt").write_text("my notes")
    (proj / "sub" / "work.txt").write_text("my work")
    monkeypatch.chdir(proj / "sub")
    before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
    for to in ("..", ".", str(proj.parent)):
        assert main(["export", str(run), "--format", "peft", "--to", to, "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert re.search(r"is or contains (the current directory|the run being exported)", err[0]), err
    assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before
    assert (proj / "notes.txt").read_text() == "my notes" and (proj / "sub" / "work.txt").read_text() == "my work"
    monkeypatch.setenv("HOME", str(proj / "sub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="contains your home directory"):
        export_run(run, "peft", proj, overwrite=True)
    assert (proj / "notes.txt").read_text() == "my notes"


def test_a_failed_export_leaves_the_earlier_one_intact(tmp_path, base, monkeypatch):
    import errno

    from smolmac.export import export_run, peft

    run, _ = make_run(tmp_path / "run", base, {"targets": ["q_proj"], "layers": 1, "dora": False})
    out = export_run(run, "peft", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(src, tmp, dtype, say, **options):
        (tmp / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft, "write", full_disk)
    with pytest.raises(UserError, match=r"out: the disk is full \(.* free, about .* needed\); free some space"):
        export_run(run, "peft", out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_overwrite_of_a_single_file_replaces_only_a_gguf_file(tmp_path):
    from smolmac.export import check_out, exporter

    kind = exporter("gguf")
    mine = tmp_path / "notes.gguf"
    mine.write_text("my notes, not a model")
    with pytest.raises(UserError, match="notes.gguf is not a GGUF file, so --overwrite will not replace it"):
        check_out(mine, tmp_path / "run", True, kind)
    earlier = tmp_path / "model.gguf"
    earlier.write_bytes(b"GGUF" + bytes(60))
    check_out(earlier, tmp_path / "run", True, kind)  # an earlier export: may be replaced


def test_peft_export_of_a_qlora_run_names_a_base_transformers_loads(tmp_path, base):
    """QLoRA: transformers cannot load an MLX 4-bit folder, so the PEFT adapter names the
    unquantised original when the folder's card records it, or (--with-base) the dequantised
    base written next to it, or stays as it was with a one-sentence warning."""
    import torch
    from mlx_lm import convert
    from peft import AutoPeftModelForCausalLM

    from smolmac.export import export_run

    qbase = tmp_path / "q4"
    convert(str(base), str(qbase), quantize=True, q_group_size=32, q_bits=4)
    run, logits = make_run(tmp_path / "run", qbase, {"targets": "all-linear", "layers": "all", "dora": False})

    messages = []
    out = export_run(run, "peft", tmp_path / "warned", on_message=messages.append)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(qbase)
    assert [m for m in messages if "PEFT cannot load it: pass --with-base" in m and m.count(". ") == 0]

    out = export_run(run, "peft", tmp_path / "with-base", with_base=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "with-base" / "base").resolve())
    assert "quantization" not in json.loads((out / "base" / "config.json").read_text())
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert np.abs(torch_logits(peft_model) - logits).max() <= TOL  # the dequantised 4-bit weights, exactly

    (qbase / "README.md").write_text(f"---\nbase_model: {base}\nlibrary_name: mlx\n---\n")  # as mlx_lm.convert writes it
    messages = []
    out = export_run(run, "peft", tmp_path / "original", on_message=messages.append)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert any("unquantised original" in m for m in messages)
    AutoPeftModelForCausalLM.from_pretrained(str(out))  # loads: the original is a float model
