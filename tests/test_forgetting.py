"""Forgetting, measured: retain loss and perplexity (eval.retain) at the start and at every eval of
SFT/DPO/ORPO runs, read back on resume, chained in pipelines, shown in the table, the CLI and the
app; `smolmac bench forgetting` on a tiny pretrained model."""

import json
import math
import threading

import pytest
from conftest import corpus, write_jsonl

import smolmac
from smolmac.config import load_recipe
from smolmac.errors import UserError
from smolmac.evaluation import retain_batches, retain_metrics, retain_text
from smolmac.models import load_model
from smolmac.pipeline import format_stage_table, stage_rows


@pytest.fixture()
def retain_file(tmp_path):
    return write_jsonl(tmp_path / "retain.jsonl", [{"text": t} for t in corpus(24, seed=7)])


def sft(model, train_file, retain, **train):
    return {
        "model": str(model), "data": {"train": str(train_file)},
        "lora": {"rank": 4, "alpha": 8}, "eval": {"retain": str(retain), "every": 3},
        "train": {"steps": 6, "lr": 2e-2, "batch_size": 4, "report_every": 1, **train},
    }


def test_sft_run_reports_retain_before_and_at_every_eval(tiny_model, chat_file, retain_file, tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "reverse: the cat", "completion": "cat the"}, {"prompt": "reverse: a dog", "completion": "dog a"}])
    rec = sft(tiny_model, chat_file, retain_file)
    rec["eval"]["exact_match"] = str(answers)
    run = smolmac.train(rec, run_dir=tmp_path / "run")
    start = run.last("start")
    # the "before" is the base model's: LoRA starts at zero
    model, tok, _, _ = load_model(str(tiny_model))
    base = retain_metrics(model, retain_batches(load_recipe(sft(tiny_model, chat_file, retain_file)), tok))
    assert start["retain_loss"] == pytest.approx(base["retain_loss"], abs=1e-5)
    assert start["retain_ppl"] == pytest.approx(math.exp(start["retain_loss"]), rel=1e-4)
    # an eval event at every eval.every steps even without validation data
    evals = [e for e in run.events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6] and all("val_loss" not in e for e in evals)
    for e in evals:
        assert e["retain_ppl"] == pytest.approx(math.exp(e["retain_loss"]), rel=1e-4)
        assert e["exact_match"] in (0.0, 0.5, 1.0)  # held-out answers scored at every eval too
    assert evals[-1]["retain_loss"] != start["retain_loss"]  # lr 2e-2 on another task moves it
    # the same number from the saved adapter
    from smolmac.adapters import attach

    attach(model, run.adapter_path)
    after = retain_metrics(model, retain_batches(load_recipe(sft(tiny_model, chat_file, retain_file)), tok))
    assert after["retain_loss"] == pytest.approx(evals[-1]["retain_loss"], abs=1e-5)


def test_resume_reads_the_before_from_the_first_start(tiny_model, chat_file, retain_file, tmp_path):
    stop = threading.Event()

    def on_event(e):
        if e["type"] == "train" and e["step"] == 2:
            stop.set()

    rec = sft(tiny_model, chat_file, retain_file)
    first = smolmac.train(rec, run_dir=tmp_path / "r", stop=stop, on_event=on_event)
    assert first.stopped
    run = smolmac.train(run_dir=tmp_path / "r", resume=True)
    starts = [e for e in run.events if e["type"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, 2]
    # not measured again on the trained weights: the first start's numbers, exactly
    assert starts[1]["retain_loss"] == starts[0]["retain_loss"] and starts[1]["retain_ppl"] == starts[0]["retain_ppl"]


def test_chat_rows_full_fine_tuning_and_orpo(tiny_model, chat_file, tmp_path):
    chats = write_jsonl(tmp_path / "keep.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": t}]}
                                                  for t in corpus(8, seed=3)])
    rec = {**sft(tiny_model, chat_file, chats, steps=2), "full": True, "eval": {"retain": str(chats)}}
    run = smolmac.train(rec, run_dir=tmp_path / "full")
    assert run.last("start")["retain_ppl"] > 1 and run.last("eval")["retain_ppl"] > 1
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "pick", "chosen": "the cat", "rejected": "a dog"}] * 8)
    rec = {"model": str(tiny_model), "method": "orpo", "data": {"train": str(pairs)}, "eval": {"retain": str(chats)},
           "train": {"steps": 2, "batch_size": 4}}
    run = smolmac.train(rec, run_dir=tmp_path / "orpo")
    assert "retain_loss" in run.last("start") and "retain_loss" in run.last("eval")


def test_bad_retain_is_one_sentence_naming_the_key(tiny_model, chat_file, tmp_path):
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    cases = [(pdf, r"eval.retain: .*notes.pdf is a '.pdf' file; give text or chat rows"),
             (tmp_path / "missing.jsonl", r"eval.retain: .*missing.jsonl does not exist"),
             (pairs, r"eval.retain: .*pairs.jsonl:1 has the columns \['chosen', 'prompt', 'rejected'\]; give text or chat rows")]
    for i, (spec, message) in enumerate(cases):
        with pytest.raises(UserError, match=message) as err:
            smolmac.train(sft(tiny_model, chat_file, spec), run_dir=tmp_path / f"bad{i}")
        assert "\n" not in str(err.value)
        assert not (tmp_path / f"bad{i}" / "checkpoints").exists()
    with pytest.raises(UserError, match="'eval.retain_rows' must be >= 1, not 0"):
        load_recipe({"model": "m", "eval": {"retain_rows": 0}})


def test_cli_bad_retain_format_exits_2_with_one_line(tiny_model, chat_file, tmp_path, capsys):
    import yaml

    from smolmac.cli import main

    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sft(tiny_model, chat_file, pdf)))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: eval.retain: ") and "notes.pdf is a '.pdf' file" in err and "\n" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()
    with pytest.raises(UserError, match="bench forgetting: --size 135m is not available"):
        smolmac.bench("forgetting", size="135m")


def test_pipeline_keeps_the_pretraining_validation_text_and_shows_kept(tiny_model, chat_file, tmp_path):
    text = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in corpus(200, seed=5)])
    recipe = {
        "model": str(tiny_model), "train": {"batch_size": 4, "report_every": 1, "max_seq_len": 32},
        "stages": [
            {"name": "pretrain", "method": "pretrain", "data": {"train": str(text), "valid": 0.1}, "train": {"steps": 3, "lr": 1e-3}},
            {"name": "sft", "method": "sft", "data": {"train": str(chat_file)}, "lora": {"rank": 4}, "train": {"steps": 3, "lr": 2e-2}},
        ],
    }
    run = smolmac.train(recipe, run_dir=tmp_path / "p")
    kept = tmp_path / "p" / "1-pretrain" / "tokens" / "valid.jsonl"
    rows = [json.loads(x) for x in kept.read_text().splitlines()]
    assert len(rows) == 20 and all(r["text"] for r in rows)  # 10% of 200 documents
    assert load_recipe(str(tmp_path / "p" / "2-sft" / "config.yaml")).eval.retain == str(kept)
    assert load_recipe(str(tmp_path / "p" / "1-pretrain" / "config.yaml")).eval.retain is None
    metrics = {e["name"]: e["metrics"] for e in run.events if e["type"] == "metrics"}
    sub = [json.loads(x) for x in (tmp_path / "p" / "2-sft" / "events.jsonl").read_text().splitlines()]
    start, last = next(e for e in sub if e["type"] == "start"), [e for e in sub if e["type"] == "eval"][-1]
    assert metrics["sft"]["retain_ppl"] == {"before": start["retain_ppl"], "after": last["retain_ppl"]}
    assert "retain_ppl" not in metrics["pretrain"]
    table = format_stage_table(tmp_path / "p").splitlines()
    assert "kept (retain ppl)" in table[0] and table[1].endswith("  -")
    assert table[2].endswith(retain_text(start["retain_ppl"], last["retain_ppl"], label="", arrow="->"))


def test_table_row_and_text_formats():
    assert retain_text(12.1, 12.6) == "retain ppl 12.1 → 12.6 (+4%)"
    assert retain_text(460.0, 2170.0, label="", arrow="->") == "460 -> 2,170 (+372%)"
    events = [{"type": "metrics", "stage": 3, "name": "sft", "method": "sft",
               "metrics": {"exact_match": {"before": 0.0, "after": 0.5}, "retain_ppl": {"before": 2.0, "after": 2.5}}},
              {"type": "stage", "stage": 3, "name": "sft", "method": "sft", "status": "finished", "elapsed_s": 9.0}]
    row = stage_rows(events)[0]
    assert row["learned"] == "exact match 0% -> 50%" and row["kept"] == "2 -> 2.5 (+25%)"
    assert "kept" not in format_stage_table([e for e in events if e["type"] == "stage"])


def test_views_show_retain_change():
    from smolmac.tui.view import RunView

    v = RunView()
    v.add({"type": "start", "step": 0, "method": "sft", "model": "m", "total_steps": 4, "retain_loss": 2.0, "retain_ppl": 7.389})
    assert v.retain is None
    assert v.add({"type": "eval", "step": 2, "retain_loss": 2.1, "retain_ppl": 8.166}) == "step 2: retain ppl 8.166"
    v.add({"type": "start", "step": 2, "method": "sft", "model": "m", "total_steps": 4, "resumed_from": 2, "retain_ppl": 9.0})
    v.add({"type": "eval", "step": 4, "val_loss": 1.0, "val_ppl": 2.7, "retain_loss": 2.2, "retain_ppl": 9.025})
    assert v.retain == "retain ppl 7.39 → 9.03 (+22%)" and v.valid == [(4, 1.0)]


def test_cli_summary_says_what_the_run_cost(tiny_model, chat_file, retain_file, tmp_path, capsys):
    import yaml

    from smolmac.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sft(tiny_model, chat_file, retain_file, steps=2)))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    events = [json.loads(x) for x in (tmp_path / "c" / "events.jsonl").read_text().splitlines()]
    before, after = events[0]["retain_ppl"], [e for e in events if e["type"] == "eval"][-1]["retain_ppl"]
    assert retain_text(before, after) in out


def test_matched_points():
    from smolmac.forgetting import matched

    curves = {"lora": {"points": [{"step": 25, "exact_match": 0.0, "answer_loss": 0.9}, {"step": 50, "exact_match": 0.2, "answer_loss": 0.5},
                                  {"step": 75, "exact_match": 0.3, "answer_loss": 0.4}]},
              "full": {"points": [{"step": 25, "exact_match": 0.4, "answer_loss": 0.3}, {"step": 50, "exact_match": 0.7, "answer_loss": 0.1}]}}
    assert {m: p["step"] for m, p in matched(curves).items()} == {"lora": 75, "full": 25}  # both reach 30%
    assert {m: p["step"] for m, p in matched(curves, "answer_loss").items()} == {"lora": 75, "full": 25}  # both reach 0.4
    curves["lora"]["points"] = curves["lora"]["points"][:1]
    assert matched(curves) is None and matched(curves, "answer_loss")["full"]["step"] == 25


@pytest.mark.slow
def test_bench_forgetting_end_to_end_on_a_few_steps(tmp_path):
    """The whole benchmark (tokenizer, pretraining, LoRA and full SFT with evals) on a few steps;
    a second call reuses what the first left in `work`."""
    from smolmac.forgetting import bench_forgetting

    lines = []
    res = bench_forgetting(steps=4, eval_every=2, pretrain_steps=4, work=tmp_path / "w", on_message=lines.append)
    assert set(res["curves"]) == {"lora", "full"}
    lora, full = res["curves"]["lora"], res["curves"]["full"]
    assert lora["retain_before"] == full["retain_before"] > 1  # the same pretrained model, measured twice
    assert lora["trainable_params"] < full["trainable_params"]
    assert [p["step"] for p in lora["points"]] == [2, 4] and all(p["retain_ppl"] > 1 for p in full["points"])
    assert any(line.startswith("at the end (4 steps):") for line in lines) and any(line.startswith("lora ") for line in lines)
    again = bench_forgetting(steps=4, eval_every=2, pretrain_steps=4, work=tmp_path / "w", on_message=lines.append)
    assert again["curves"] == res["curves"]
    with pytest.raises(UserError, match=r"--work: .*lora holds a run of 4 steps at lr 0.002, not 6 at 0.002; give another --work folder"):
        bench_forgetting(steps=6, eval_every=2, pretrain_steps=4, work=tmp_path / "w")
