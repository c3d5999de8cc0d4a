"""`smolmac eval`: lm-evaluation-harness tasks (a local YAML over tiny json files, offline) on a
base and its adapters loaded once; the same numbers as lm-eval's own Hugging Face backend on the
fused export; bad input in one sentence."""

import json
import random
import textwrap

import pytest
from conftest import WORDS

import smolmac
from smolmac.errors import UserError

pytest.importorskip("lm_eval")


def _docs(n: int = 12, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS[:20]) for _ in range(rng.randint(2, 4))]
        right = " ".join(reversed(words))
        wrong = " ".join(words) if len(set(words)) > 1 else right + " " + words[0]
        out.append({"question": "reverse: " + " ".join(words), "choices": [wrong, right], "answer": 1, "text": " ".join(words) + ". " + right + "."})
    return out


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Three tasks, one per request type: multiple choice (loglikelihood), word perplexity
    (loglikelihood_rolling) and greedy generation (generate_until)."""
    d = tmp_path_factory.mktemp("tasks")
    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _docs()))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (d / "tiny_choice.yaml").write_text(common + textwrap.dedent("""\
        task: tiny_choice
        output_type: multiple_choice
        doc_to_text: "{{question}}\\n"
        doc_to_choice: "{{choices}}"
        doc_to_target: "{{answer}}"
        metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
        """))
    (d / "tiny_ppl.yaml").write_text(common + textwrap.dedent("""\
        task: tiny_ppl
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{text}}"
        metric_list:
          - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
          - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}
        """))
    (d / "tiny_gen.yaml").write_text(common + textwrap.dedent("""\
        task: tiny_gen
        output_type: generate_until
        doc_to_text: "{{question}}\\n"
        doc_to_target: "{{choices[answer]}}"
        generation_kwargs: {until: ["\\n", "."], do_sample: false, max_gen_toks: 6}
        metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
        """))
    (d / "sampled.yaml").write_text(common + textwrap.dedent("""\
        task: tiny_sampled
        output_type: generate_until
        doc_to_text: "{{question}}"
        doc_to_target: "{{answer}}"
        generation_kwargs: {until: ["\\n"], do_sample: true, temperature: 0.7}
        metric_list: [{metric: exact_match}]
        """))
    return d


@pytest.fixture(scope="module")
def adapter_run(tiny_model, tmp_path_factory):
    from conftest import chat_rows, write_jsonl

    d = tmp_path_factory.mktemp("runs")
    data = write_jsonl(d / "chat.jsonl", chat_rows())
    run = smolmac.train({"model": str(tiny_model), "data": {"train": str(data)}, "lora": {"rank": 4},
                         "train": {"steps": 6, "lr": 2e-2, "batch_size": 4}}, run_dir=d / "rev")
    return run.dir


TASKS = "tiny_choice,tiny_ppl,tiny_gen"


def test_base_and_adapter_on_one_loaded_base_and_hf_parity(tiny_model, adapter_run, tasks, tmp_path):
    res = smolmac.evaluate(str(tiny_model), {"rev": str(adapter_run)}, TASKS, include_path=str(tasks), out=tmp_path / "r.json")
    assert res["columns"] == ["base", "rev"]
    scores = res["scores"]
    assert set(scores) == {"tiny_choice", "tiny_ppl", "tiny_gen"}
    assert set(scores["tiny_ppl"]) == {"word_perplexity", "bits_per_byte"}
    lines = res["table"].splitlines()
    assert lines[0].split() == ["task", "metric", "base", "rev"] and len(lines) == 1 + 4
    assert json.loads((tmp_path / "r.json").read_text())["scores"] == json.loads(json.dumps(scores))
    ppl = scores["tiny_ppl"]["word_perplexity"]
    assert ppl["rev"] != ppl["base"]  # the adapter answered its column

    # lm-eval's own Hugging Face backend on the fused export (transformers, float32): same numbers
    import lm_eval

    fused = smolmac.export(str(adapter_run), format="hf", to=tmp_path / "fused", dtype="float32")
    hf = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={fused},dtype=float32,device=cpu", tasks=TASKS.split(","),
                                 task_manager=lm_eval.tasks.TaskManager(include_path=str(tasks), include_defaults=False),
                                 batch_size=4, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)["results"]
    for task, metrics in scores.items():
        for metric, values in metrics.items():
            key = f"{metric},none" if "(" not in metric else metric.replace(" (", ",").rstrip(")")
            assert values["rev"] == pytest.approx(hf[task][key], rel=1e-4, abs=1e-6), (task, metric)


def test_smolmac_lm_matches_its_own_log_probs(tiny_model, adapter_run):
    """Loglikelihood of a (context, continuation) equals the summed log-probs of the continuation
    tokens computed directly; a model built from pretrained + adapter equals the switched one."""
    import mlx.core as mx
    from lm_eval.api.instance import Instance

    from smolmac.harness import SmolmacLM
    from smolmac.losses import token_logps

    lm = SmolmacLM(pretrained=str(tiny_model), adapter=str(adapter_run), dtype="float32", batch_size=3)
    reqs = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in
            enumerate([("reverse: the cat\n", "cat the"), ("reverse: a dog ran ", "ran dog a"), ("", "the cat"), ("one", " two")])]
    got = lm.loglikelihood(reqs)
    for (ctx, cont), (score, _greedy) in zip([r.args for r in reqs], got):
        c, w = lm._encode_pair(ctx, cont) if ctx else ([lm.prefix_token_id], lm.tok_encode(cont, add_special_tokens=False))
        toks = mx.array([c + w])
        want = token_logps(lm.model(toks[:, :-1]), toks[:, 1:])[0, -len(w):].sum().item()
        assert score == pytest.approx(want, abs=1e-4)
    handle = smolmac.load(str(tiny_model), {"rev": str(adapter_run)}, dtype="float32").use("rev")
    again = SmolmacLM(handle=handle, batch_size=1).loglikelihood(reqs)
    assert [s for s, _ in again] == pytest.approx([s for s, _ in got], abs=1e-5) and [g for _, g in again] == [g for _, g in got]


def test_bad_input_is_one_sentence(tiny_model, tasks, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--tasks: lm-eval has no task 'tiny_chioce'.*did you mean 'tiny_choice'"):
        smolmac.evaluate(str(tiny_model), tasks="tiny_chioce", include_path=str(tasks))
    with pytest.raises(UserError, match="--include-path: .*nowhere does not exist"):
        smolmac.evaluate(str(tiny_model), tasks="x", include_path=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="--tasks: give at least one"):
        smolmac.evaluate(str(tiny_model), tasks=" , ")
    with pytest.raises(UserError, match="--limit: 2.5 is not a number of documents"):
        smolmac.evaluate(str(tiny_model), tasks="tiny_choice", limit=2.5)
    with pytest.raises(UserError, match="'base' names the base model's column"):
        smolmac.evaluate(str(tiny_model), {"base": str(tiny_model)}, "tiny_choice", include_path=str(tasks))
    with pytest.raises(UserError, match="smolmac eval generates greedily"):
        smolmac.evaluate(str(tiny_model), tasks="tiny_sampled", include_path=str(tasks), limit=2)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'smolmac\[eval\]'"):
        smolmac.evaluate(str(tiny_model), tasks="tiny_choice")


def test_cli_prints_one_table(tiny_model, adapter_run, tasks, capsys):
    from smolmac.cli import main

    assert main(["eval", str(tiny_model), "--adapter", f"rev={adapter_run}", "--tasks", "tiny_choice", "--include-path", str(tasks),
                 "--limit", "4", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["task", "metric"])
    assert out[header].split() == ["task", "metric", "base", "rev"] and out[header + 1].split()[:2] == ["tiny_choice", "acc"]
    assert main(["eval", str(tiny_model), "--tasks", "nope", "--include-path", str(tasks)]) == 2
    assert "error: --tasks: lm-eval has no task 'nope'" in capsys.readouterr().err
