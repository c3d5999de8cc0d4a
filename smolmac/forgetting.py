"""`smolmac bench forgetting`: does LoRA keep more of what the base knew than full fine-tuning?

    smolmac bench forgetting [--steps 300] [--work DIR] [--out results.json]

The claim (LoRA: "the base stays frozen, no catastrophic forgetting"), measured on this machine
with tiny models: a micro Llama is pretrained briefly on the quickstart's arithmetic corpus (the
quickstart's own tokenizer and pretraining stages), then the same SFT task (the quickstart's
questions -> answers) is trained from it twice, with LoRA and with full fine-tuning, same data,
steps, batch and seed. Every `eval_every` steps each run reports its task score (exact match on
the 31 held-out questions, and the loss of their answers) and its retain perplexity on the
pretraining validation text (eval.retain). The two are compared at a matched task score: the
first evaluation at which each reaches the lower of their best exact matches (when both learned
something), the first at which each reaches the higher of their lowest answer losses, and at the
end.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

# The quickstart's tokenizer and pretraining stages (recipes/quickstart.yaml), steps aside.
PRETRAIN = {
    "name": "forgetting-pretrain",
    "model": {"new": {"preset": "micro", "initializer_range": 0.05}},
    "tokenizer": {"type": "bpe", "vocab_size": 416, "data": "quickstart:corpus.txt"},
    "train": {"batch_size": 16, "betas": [0.9, 0.99], "warmup": 10, "seed": 0, "report_every": 50},
    "stages": [
        {"name": "tokenizer", "method": "tokenizer"},
        {"name": "pretrain", "method": "pretrain", "data": {"train": "quickstart:corpus.txt", "valid": 0.02},
         "train": {"steps": 300, "lr": 3.0e-3, "warmup": 30, "weight_decay": 3.0, "min_lr_ratio": 0.1, "max_seq_len": 128}},
    ],
}

# The same SFT task both ways; only what trains (and its learning rate) differs.
MODES = {
    "lora": {"lora": {"rank": 8, "alpha": 16, "targets": "all-linear"}},
    "full": {"full": True},
}
# full: the quickstart's SFT rate; lora (rank 8, alpha 16): the best of 1e-3, 2e-3, 5e-3 and 1e-2
# on this task in 150 steps (exact match 3%, 32%, 0%, 0%: from 5e-3 up it answered no held-out
# question and its retain perplexity exploded).
LEARNING_RATES = {"lora": 2e-3, "full": 1e-3}


def pretrained(work: Path, steps: int, on_message) -> tuple[Path, Path, dict]:
    """(model dir, retain rows, pretraining metrics): the quickstart's first two stages in
    `work/pretrain`, reused when already there."""
    import smolmac
    from smolmac import events as ev

    run_dir = work / "pretrain"
    model = run_dir / "2-pretrain" / "model"
    if not (model / "config.json").is_file():
        recipe = json.loads(json.dumps(PRETRAIN))
        recipe["stages"][1]["train"]["steps"] = steps
        on_message(f"pretraining a micro model on the quickstart corpus ({steps} steps) in {run_dir} ...")
        smolmac.train(recipe, run_dir=run_dir, resume=(run_dir / "config.yaml").is_file())
    events = ev.read_events(run_dir / "events.jsonl")
    metrics = next((e["metrics"] for e in reversed(events) if e["type"] == "metrics" and e["name"] == "pretrain"), {})
    return model, run_dir / "2-pretrain" / "tokens" / "valid.jsonl", metrics


def sft_recipe(model: Path, retain: Path, mode: str, steps: int, eval_every: int, lr: float) -> dict:
    return {
        "name": f"forgetting-{mode}", "model": str(model), "method": "sft", **MODES[mode],
        "data": {"train": "quickstart:sft.jsonl", "valid": "quickstart:eval.jsonl"},
        "eval": {"every": eval_every, "exact_match": "quickstart:eval.jsonl", "retain": str(retain)},
        "train": {"steps": steps, "lr": lr, "batch_size": 16, "max_seq_len": 64, "warmup": 10, "betas": [0.9, 0.99],
                  "seed": 0, "report_every": 50},
    }


def _same_settings(run_dir: Path, steps: int, lr: float) -> None:
    """A run left in `work` is reused only when it has the steps and learning rate asked for."""
    from smolmac.errors import UserError
    from smolmac.runs import read_config

    t = read_config(run_dir).train
    if (t.steps, t.lr) != (steps, lr):
        raise UserError(f"--work: {run_dir} holds a run of {t.steps} steps at lr {t.lr:g}, not {steps} at {lr:g}; "
                        f"give another --work folder or remove that one.")


def curve(events: list[dict]) -> dict:
    """A run's trainable parameters, retain ppl before, and (step, exact match, answer loss,
    retain ppl) at each evaluation."""
    start = next(e for e in events if e["type"] == "start")
    points = [{"step": e["step"], "exact_match": e["exact_match"], "answer_loss": e.get("val_loss"), "retain_ppl": e["retain_ppl"]}
              for e in events if e["type"] == "eval"]
    done = next((e for e in reversed(events) if e["type"] == "done"), {})
    return {"trainable_params": start["trainable_params"], "retain_before": start["retain_ppl"], "points": points,
            "train_s": done.get("elapsed_s")}


def matched(curves: dict, key: str = "exact_match") -> dict | None:
    """The first evaluation of each run at which it reaches the worse of the runs' best scores
    (`exact_match`: highest; `answer_loss`: lowest); None when a run never answered any held-out
    question (exact match 0 throughout)."""
    sign = -1 if key == "answer_loss" else 1
    target = min(max(sign * p[key] for p in c["points"]) for c in curves.values())
    if key == "exact_match" and target <= 0:
        return None
    return {mode: next(p for p in c["points"] if sign * p[key] >= target) for mode, c in curves.items()}


def _row(mode: str, c: dict, p: dict) -> str:
    from smolmac.evaluation import retain_text

    return (f"{mode:5} {c['trainable_params']:>10,} {p['step']:>5} {100 * p['exact_match']:>10.0f}% {p['answer_loss']:>11.3f}  "
            + retain_text(c["retain_before"], p["retain_ppl"], label="", arrow="->"))


def bench_forgetting(steps: int | None = None, eval_every: int = 25, pretrain_steps: int = 300, work: str | Path | None = None,
                     learning_rates: dict | None = None, on_message=print) -> dict:
    """LoRA vs full fine-tuning on the same SFT task from the same pretrained micro model: task
    score and retain perplexity change, at a matched task score and at the end.

    Args:
        steps: SFT steps of each run (default 300).
        eval_every: steps between evaluations (exact match, answer loss, retain perplexity).
        pretrain_steps: pretraining steps of the micro model (the quickstart uses 400).
        work: keep the pretrained model and both runs here (reused by a later call); default a
            temporary folder.
        learning_rates: {"lora": lr, "full": lr} (default 2e-3 and 1e-3).
        on_message: receives the printed lines.
    """
    import smolmac

    steps = steps or 300
    lrs = {**LEARNING_RATES, **(learning_rates or {})}
    tmp = None if work else tempfile.TemporaryDirectory()
    root = Path(work or tmp.name)
    try:
        tic = time.perf_counter()
        model, retain, pre = pretrained(root, pretrain_steps, on_message)
        curves = {}
        for mode in MODES:
            on_message(f"SFT with {mode} (lr {lrs[mode]:g}, {steps} steps) ...")
            run_dir = root / mode
            resume = (run_dir / "config.yaml").is_file()
            if resume:
                _same_settings(run_dir, steps, lrs[mode])
            run = smolmac.train(None if resume else sft_recipe(model, retain, mode, steps, eval_every, lrs[mode]), run_dir=run_dir, resume=resume)
            curves[mode] = curve(run.events)
    finally:
        if tmp is not None:
            tmp.cleanup()
    at, at_loss = matched(curves), matched(curves, "answer_loss")
    ppl = {k: f"{v:.3g}" for k, v in (pre.get("val_ppl") or {}).items() if isinstance(v, (int, float))}
    on_message(f"pretrained micro model: val perplexity {ppl.get('before', '?')} -> {ppl.get('after', '?')} ({pretrain_steps} steps); "
               f"task: quickstart SFT, exact match on 31 held-out questions; retain: the pretraining validation text; "
               f"lr {', '.join(f'{m} {lr:g}' for m, lr in lrs.items())}")
    header = f"{'mode':5} {'trainable':>10} {'step':>5} {'exact match':>11} {'answer loss':>11}  retain ppl before -> after"
    tables = [(f"at a matched task score (the first eval reaching {100 * min(p['exact_match'] for p in at.values()):.0f}% exact match):", at)] if at else []
    if not at:
        on_message("no matched exact match: a run answered no held-out question at any evaluation")
    tables += [(f"at a matched answer loss (the first eval at or below {max(p['answer_loss'] for p in at_loss.values()):.3f}):", at_loss),
               (f"at the end ({steps} steps):", {mode: c["points"][-1] for mode, c in curves.items()})]
    for title, points in tables:
        on_message(title)
        on_message(header)
        for mode, c in curves.items():
            on_message(_row(mode, c, points[mode]))
    return {"pretrain": pre, "steps": steps, "learning_rates": lrs, "curves": curves, "matched": at,
            "matched_answer_loss": at_loss, "wall_s": round(time.perf_counter() - tic, 1)}
