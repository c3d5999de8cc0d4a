"""`smolmac eval` against lm-eval's own Hugging Face backend on the same weights: the base with a
LoRA run switched on (smolmac, MLX) and the run fused by `smolmac export RUN --format hf` (lm-eval
`hf`, transformers + torch), float32, on three tasks over the quickstart's held-out files (one per
request type), written as lm-eval YAML in a temp dir (offline).

    python benchmarks/eval_parity.py RUN_DIR [--limit N]      # RUN_DIR: a LoRA run of a quickstart model
    smolmac bench forgetting --work w && python benchmarks/eval_parity.py w/lora

Tasks: `qs_choice` (multiple_choice, loglikelihood: the right equation vs a typical mistake,
eval_preference.jsonl), `qs_answer` (generate_until, exact match, eval.jsonl; its prompts go
through the chat template on both sides, `--apply_chat_template`, as the SFT run was trained),
`qs_text` (loglikelihood_rolling, word perplexity and bits per byte of the pretraining validation
text). Besides the scores, the greedy answers of qs_answer are compared one by one.
"""

import argparse
import json
import tempfile
import textwrap
from pathlib import Path

import smolmac  # noqa: F401  (the optimised BLAS before mlx)
from smolmac.quickstart import path as quickstart_file

PLAIN, CHAT = ["qs_choice", "qs_text"], ["qs_answer"]  # CHAT: prompts through the chat template


def write_tasks(root: Path, text_rows: Path | None) -> Path:
    pref = quickstart_file("eval_preference.jsonl")
    answers = quickstart_file("eval.jsonl")

    def source(path):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"

    (root / "qs_choice.yaml").write_text(source(pref) + textwrap.dedent("""\
        task: qs_choice
        output_type: multiple_choice
        doc_to_text: "{{prompt}} "
        doc_to_choice: "{{[chosen, rejected]}}"
        doc_to_target: 0
        metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
        """))
    (root / "qs_answer.yaml").write_text(source(answers) + textwrap.dedent("""\
        task: qs_answer
        output_type: generate_until
        doc_to_text: "{{prompt}}"
        doc_to_target: "{{completion}}"
        generation_kwargs: {until: ["\\n", "."], do_sample: false, max_gen_toks: 12}
        metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
        """))
    rows = text_rows or answers
    (root / "qs_text.yaml").write_text(source(rows) + textwrap.dedent(f"""\
        task: qs_text
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{{'text' if text_rows else 'completion'}}}}}"
        metric_list:
          - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
          - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
        """))
    return root


def main():
    import lm_eval
    from lm_eval.tasks import TaskManager

    from smolmac.generate import base_of
    from smolmac.harness import SmolmacLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="A LoRA run dir (its base is the model it records).")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    run = Path(args.run)
    base = base_of(run)
    retain = next(iter(Path(base).parent.glob("tokens/valid.jsonl")), None)  # a quickstart pretrain stage's text
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_tasks(Path(tmp), retain)
        manager = TaskManager(include_path=str(tasks), include_defaults=False)

        def samples(model, model_args=None):  # qs_answer's greedy answers, one per document
            return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=CHAT, limit=args.limit, task_manager=manager, batch_size=8,
                                           apply_chat_template=True, log_samples=True)["samples"]["qs_answer"]

        ours = {}  # `smolmac eval`'s path: smolmac.evaluate, the adapter switched on the loaded base
        for names, chat in ((PLAIN, False), (CHAT, True)):
            res = smolmac.evaluate(base, {"lora": str(run)}, names, limit=args.limit, include_path=str(tasks), dtype="float32", chat_template=chat)
            ours.update({task: (metrics, None) for task, metrics in res["scores"].items()})
        ours["qs_answer"] = (ours["qs_answer"][0], samples(SmolmacLM(base, str(run), dtype="float32")))
        fused = smolmac.export(str(run), format="hf", to=Path(tmp) / "fused", dtype="float32")
        hf, hf_args = {}, f"pretrained={fused},dtype=float32,device=cpu"
        for names, chat in ((PLAIN, False), (CHAT, True)):
            out = lm_eval.simple_evaluate(model="hf", model_args=hf_args, tasks=names, limit=args.limit, task_manager=manager, batch_size=8,
                                          apply_chat_template=chat)
            hf.update({task: (out["results"][task], None) for task in names})
        hf["qs_answer"] = (hf["qs_answer"][0], samples("hf", hf_args))
    print(f"\nbase {base}, adapter {run}; lm-eval {getattr(lm_eval, '__version__', '')}")
    print(f"{'task':10} {'metric':16} {'smolmac (MLX, adapter)':>24} {'lm-eval hf (fused)':>20} {'abs diff':>10}")
    worst = 0.0
    for task, (metrics, _) in ours.items():
        for metric, values in metrics.items():
            theirs = hf[task][0][f"{metric},none"]
            worst = max(worst, abs(values["lora"] - theirs))
            print(f"{task:10} {metric:16} {values['lora']:24.6f} {theirs:20.6f} {abs(values['lora'] - theirs):10.2e}")
    mine, theirs = ours["qs_answer"][1], hf["qs_answer"][1]
    same = None
    if mine and theirs:  # the greedy answers themselves, document by document
        by_doc = {s["doc_id"]: s["filtered_resps"] for s in theirs}
        same = sum(s["filtered_resps"] == by_doc.get(s["doc_id"]) for s in mine)
        print(f"qs_answer: {same} of {len(mine)} greedy answers identical; e.g. {mine[0]['doc']['prompt']!r} -> {mine[0]['filtered_resps']}")
    print(json.dumps({"max_abs_diff": worst, "identical_answers": same, "answers": len(mine or [])}))

if __name__ == "__main__":
    main()
