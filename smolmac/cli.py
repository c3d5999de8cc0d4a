"""The `smolmac` command.

    smolmac                                  # the Textual app (same as `smolmac tui`)
    smolmac train recipes/quickstart.yaml    # train from a recipe (progress bar)
    smolmac train RECIPE --set train.lr=1e-4 --run-dir runs/x [--json | --quiet]
    smolmac train --resume runs/x            # continue from the last checkpoint
    smolmac train RECIPE --nproc 2           # data parallel: 2 processes (or --hostfile hosts.json)
    smolmac launch-check --hostfile hosts.json RECIPE   # can every host run it?
    smolmac generate --model M [--adapter runs/x] --prompt "Hi"
    smolmac generate --model M --adapter math=runs/a --adapter style=runs/b --use math --prompt "Hi"
    smolmac export runs/x --format peft|hf|mlx|mlx-q4|mlx-q8|ollama --to out/ [--dtype bfloat16]
    smolmac export runs/x --format gguf|gguf-lora --to out/x.gguf [--dtype f16] [--quantize q4_0]
    smolmac adapters combine runs/a runs/b --weights 0.7,0.3 --method linear|cat|svd [--rank R] --to out/
    smolmac upload out/ --repo you/name [--private] [--dry-run]
    smolmac bench sft|dpo|pretrain|forgetting
    smolmac eval BASE --adapter math=runs/a --tasks arc_easy,hellaswag [--limit N]
    smolmac runs                             # list runs (a pipeline with its stages)
    smolmac recipes                          # the recipes `smolmac train NAME` finds
    smolmac inspect MODEL_OR_RUN [--tokens TEXT] [--neighbours TOKEN] [--json]

Exit codes: 0 done; 2 a user error (one sentence on stderr); 3 `train` stopped by Ctrl-C,
SIGTERM or SIGHUP after saving a checkpoint (continue with --resume); 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from smolmac.errors import UserError

EXIT_STOPPED = 3  # train stopped on a signal after checkpointing: resume it with --resume


class _Parser(argparse.ArgumentParser):
    """argparse with the one-sentence errors of the rest of smolmac (no usage block)."""

    def error(self, message):
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`.", file=sys.stderr)
        raise SystemExit(2)


def _number(kind, lo=None, hi=None, lo_open=False):
    """An argparse type: a number of `kind` within [lo, hi] ((lo, hi] when lo_open)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, not {text!r}") from None
        if value != value or (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
            bounds = f"in {'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="smolmac", description="Make a small language model your own: pretrain, fine-tune, align, chat and export on MLX. Without a command, opens the app.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="Train from a recipe (sft, pretrain, dpo, orpo, pipelines).", description="Train from a YAML recipe; see recipes/ and `--help-keys` for every key.")
    t.add_argument("recipe", nargs="?", help="Recipe YAML, or the name of one (`smolmac recipes`); not needed with --resume DIR.")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a recipe key, e.g. --set train.lr=1e-4 (repeatable); with --resume only train.lr, train.steps, train.epochs, train.report_every, train.early_stopping, eval.every, eval.batches, save.every, save.keep and report_to.")
    t.add_argument("--run-dir", help="Run directory (default runs/<recipe>-<timestamp>).")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR", help="Continue the run in DIR (or --run-dir) from its last checkpoint.")
    out = t.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="Stream events as JSON lines to stdout instead of a progress bar.")
    out.add_argument("--quiet", action="store_true", help="Print nothing but errors.")
    t.add_argument("--help-keys", action="store_true", help="List every recipe key with its default and help, then exit.")
    t.add_argument("--nproc", type=int, help="Train data-parallel in N processes on this machine (mlx.launch, ring backend).")
    t.add_argument("--hostfile", help="Train data-parallel across the hosts of this mlx.launch hostfile (JSON), one process each.")
    t.add_argument("--backend", choices=["ring", "jaccl", "mpi"], help="mx.distributed backend for --hostfile (default: the hostfile's, else ring).")

    g = sub.add_parser("generate", help="Stream a completion from a model (optionally with adapters).", description="Load a base model once with any number of named adapters and stream a completion with one of them (or the base).")
    g.add_argument("--model", required=True, help="Hub id or local model directory.")
    g.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR", help="A run dir, an mlx-lm adapter dir or a PEFT adapter dir, optionally named (math=runs/a); repeat to load several on the one base.")
    g.add_argument("--pick", choices=["last", "best"], default="last", help="With run dirs: their last weights (default) or their best evaluation's (save.best).")
    g.add_argument("--use", metavar="NAME", help="Which adapter answers ('none' for the base); needed when several are loaded.")
    g.add_argument("--dtype", default="auto", help="auto (bfloat16 on Metal/CUDA, float32 on the CPU), float32, float16 or bfloat16.")
    g.add_argument("--prompt", required=True, help="The user prompt (chat-templated when the tokenizer has a template).")
    g.add_argument("--max-tokens", type=_number(int, 1), default=256, help="Tokens to generate, >= 1 (default 256).")
    g.add_argument("--temp", type=_number(float, 0), default=0.0, help="Sampling temperature, >= 0; 0 = greedy (default).")
    g.add_argument("--top-p", type=_number(float, 0, 1, lo_open=True), default=1.0, help="Nucleus sampling threshold in (0, 1] (default 1.0).")
    g.add_argument("--raw", action="store_true", help="Do not apply the chat template.")

    from smolmac.export import EXPORTERS

    e = sub.add_parser("export", help="Export a run: " + ", ".join(EXPORTERS) + ".")
    e.add_argument("run_dir", help="The run directory (or an adapter directory).")
    e.add_argument("--format", required=True, choices=list(EXPORTERS), help="; ".join(f"{k}: {v.help}" for k, v in EXPORTERS.items()) + ".")
    e.add_argument("--to", required=True, help="Output directory (gguf, gguf-lora: a file ending in .gguf).")
    e.add_argument("--dtype", help="float32, float16 or bfloat16; for gguf, ollama and gguf-lora f32, f16, bf16 or q8_0 (default: the model's).")
    e.add_argument("--quantize", metavar="TYPE", help="gguf, ollama: a GGUF type the gguf package can write (q4_0, q4_1, q5_0, q5_1, q8_0); k-quants need llama.cpp's llama-quantize.")
    e.add_argument("--group-size", type=int, metavar="N", help="mlx-q4, mlx-q8: quantisation group size, 32, 64 (default) or 128.")
    e.add_argument("--with-base", action="store_true", help="peft: for a quantised base whose original is unknown, also write the dequantised base (DIR/base) for PEFT to load.")
    e.add_argument("--overwrite", action="store_true", help="Replace an earlier export at OUT (only a folder `smolmac export` wrote and holding nothing else, or a .gguf file).")
    e.add_argument("--pick", choices=["last", "best"], default="last", help="The run's last weights (default) or the best evaluation's (save.best: adapter-best/, model-best/).")

    u = sub.add_parser("upload", help="Upload an export to the Hugging Face Hub.")
    u.add_argument("dir", help="An export directory (from `smolmac export`).")
    u.add_argument("--repo", required=True, help="Hub repository, e.g. you/my-model.")
    u.add_argument("--private", action="store_true", help="Create the repository as private.")
    u.add_argument("--dry-run", action="store_true", help="Show the files and the model card; upload nothing (offline).")
    u.add_argument("--message", help="Commit message.")

    b = sub.add_parser("bench", help="Benchmarks: smolmac vs mlx-lm (sft), DPO vs SFT (dpo), pretraining MFU (pretrain), LoRA vs full forgetting (forgetting).")
    b.add_argument("what", choices=["sft", "dpo", "pretrain", "forgetting"], help="Which benchmark.")
    b.add_argument("--size", default="tiny", choices=["tiny", "135m"], help="Model shape (135m needs a GPU or a Mac).")
    b.add_argument("--steps", type=_number(int, 1), default=None, help="Measured steps per system, >= 1.")
    b.add_argument("--batch-size", type=_number(int, 1), default=8, help="Batch size, >= 1 (default 8).")
    b.add_argument("--out", help="Write the results as JSON here.")
    b.add_argument("--work", metavar="DIR", help="forgetting: keep the pretrained model and both runs here (a later call reuses them).")

    ev = sub.add_parser("eval", help="lm-evaluation-harness tasks on a base and its adapters (one table).", description="Run EleutherAI's lm-evaluation-harness tasks on a base model and on each adapter, the base loaded once and the adapters switched on it; prints one table (task x base/adapters). Needs pip install 'smolmac[eval]'.")
    ev.add_argument("base", nargs="?", help="Hub id or model directory (default: the base the first adapter records).")
    ev.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR", help="A run dir, an mlx-lm or a PEFT adapter dir, optionally named (math=runs/a); repeatable.")
    ev.add_argument("--tasks", required=True, help="lm-eval task or group names, comma-separated, e.g. arc_easy,hellaswag.")
    ev.add_argument("--limit", type=float, help="At most N documents per task (a number below 1: that fraction).")
    ev.add_argument("--include-path", help="A folder (or YAML file) with your own lm-eval task definitions.")
    ev.add_argument("--num-fewshot", type=int, help="Few-shot examples per prompt (default: each task's).")
    ev.add_argument("--batch-size", type=int, default=8, help="Rows per forward pass (default 8).")
    ev.add_argument("--dtype", default="auto", help="auto (bfloat16 on Metal/CUDA, float32 on the CPU), float32, float16 or bfloat16.")
    ev.add_argument("--chat-template", action="store_true", help="Render prompts with the tokenizer's chat template.")
    ev.add_argument("--out", help="Also write the scores and lm-eval's full results as JSON here.")

    lc = sub.add_parser("launch-check", help="Check that every host of a hostfile can run a recipe data-parallel.")
    lc.add_argument("recipe", nargs="?", help="Recipe whose model and data paths every host must see.")
    lc.add_argument("--hostfile", required=True, help="mlx.launch hostfile (JSON).")
    lc.add_argument("--backend", choices=["ring", "jaccl", "mpi"], help="Backend to check for (default: the hostfile's, else ring).")

    ad = sub.add_parser("adapters", help="Work with adapters: combine several into one.")
    adsub = ad.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = adsub.add_parser("combine", help="Combine adapters into one (PEFT's add_weighted_adapter).", description="Combine adapters of one base model into one adapter with PEFT's add_weighted_adapter definitions: linear (equal ranks; A and B weighted by sqrt(weight x scaling)), cat (ranks concatenated; exact sum of the weighted updates), svd (the weighted sum of the updates re-factorised to --rank).")
    c.add_argument("adapters", nargs="+", metavar="[NAME=]DIR", help="Run dirs, mlx-lm or PEFT adapter dirs, optionally named (math=runs/a).")
    c.add_argument("--weights", required=True, help="One weight per adapter, comma-separated, e.g. 0.7,0.3 (a negative weight subtracts; write --weights=-0.5,1 when the first is negative).")
    c.add_argument("--method", default="svd", choices=["linear", "cat", "svd"], help="linear, cat or svd (default svd, as in PEFT).")
    c.add_argument("--rank", type=int, help="Rank of an svd combination (default: the largest rank).")
    c.add_argument("--to", required=True, help="Output directory (nothing is written there on error).")
    c.add_argument("--format", default="peft", choices=["peft", "mlx"], help="peft (default) or mlx (mlx_lm --adapter-path).")
    c.add_argument("--overwrite", action="store_true", help="Replace an earlier export or combination at OUT (only a folder smolmac wrote, holding nothing else).")

    r = sub.add_parser("runs", help="List runs with status, method, model, step and loss.")
    r.add_argument("dir", nargs="?", default=None, help="Runs folder (default runs/).")

    rc = sub.add_parser("recipes", help="List the recipes `smolmac train NAME` finds: yours in ./recipes, then the shipped ones.")
    rc.add_argument("--dir", default="recipes", help="Your recipes folder (default recipes/).")

    i = sub.add_parser("inspect", help="Look inside a model or run: tokens, parameters per block, nearest tokens.")
    i.add_argument("target", help="A model (Hub id or folder), a run dir (its adapter counts as trained) or a pipeline dir.")
    i.add_argument("--tokens", metavar="TEXT", help="Show how TEXT splits into tokens (pieces and ids).")
    i.add_argument("--neighbours", metavar="TOKEN", help="The tokens nearest to TOKEN in the input embedding (cosine similarity).")
    i.add_argument("--top", type=int, default=8, help="How many neighbours (default 8).")
    i.add_argument("--json", action="store_true", help="Print the report as JSON.")

    a = sub.add_parser("tui", help="Open the Textual app.")
    a.add_argument("--runs", default="runs", help="Runs folder (default runs/).")
    a.add_argument("--recipes", default="recipes", help="Recipes folder (default recipes/).")
    return p


# ---------------------------------------------------------------------------------------------


def _print_keys():
    from smolmac.config import field_help

    for key, tp, default, help_, valid in field_help():
        print(f"{key:24} {tp:22} default {default!r}" + (f"  ({valid})" if valid else "") + f"\n    {help_}")


def _on_stop_signals(stop: threading.Event):
    """Ctrl-C, SIGTERM (kill, the app's or a scheduler's stop) and SIGHUP (the terminal closed)
    all ask the run to checkpoint and stop; a second Ctrl-C interrupts at once."""

    def handler(signum, frame):
        if signum == signal.SIGHUP:  # the terminal is gone: printing to it would fail
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def _show_json(e):
    print(json.dumps(e, ensure_ascii=False), flush=True)


def _train_process(args, stop) -> int:
    """One process of a data-parallel group (started by mlx.launch for --nproc/--hostfile):
    process 0 prints its events as JSON lines for the launcher, the others print nothing.

    It ends with os._exit: everything is written and closed by then, and Python's final garbage
    collection of a heap holding transformers and mlx-lm takes seconds (measured: 4 s for one
    process, 13 s for two sharing 2 cores), while the group is done only when all have exited.
    """
    import os
    import traceback

    from smolmac import api, distributed, runs

    run_dir = Path(args.run_dir)

    def run(cfg, rd, resume, main):
        api.run(cfg, rd, resume=resume, on_event=_show_json if main else None, stop=stop)

    try:
        code = distributed.run_worker(lambda: (runs.read_config(run_dir), run_dir, bool(args.resume)), run, stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints already written are kept.", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_train(args) -> int:
    if args.help_keys:
        _print_keys()
        return 0
    from smolmac import api, distributed, runs
    from smolmac.config import load_recipe

    stop = threading.Event()
    _on_stop_signals(stop)
    if distributed.is_worker():
        return _train_process(args, stop)

    resume = bool(args.resume)
    run_dir = args.resume if isinstance(args.resume, str) else args.run_dir
    if resume and not run_dir:
        raise UserError("--resume: give the run directory, e.g. smolmac train --resume runs/my-run.")
    if not resume and not args.recipe:
        raise UserError("train: give a recipe, e.g. smolmac train recipes/quickstart.yaml.")
    if resume:
        cfg = runs.read_config(run_dir)  # the saved recipe; --set keys are checked by api.run
        run_dir = Path(run_dir)
    else:
        cfg = load_recipe(args.recipe, args.overrides)
        run_dir = Path(run_dir) if run_dir else runs.default_run_dir(cfg)
    if args.backend and not args.hostfile:
        raise UserError("--backend: applies to --hostfile runs (--nproc always uses the ring backend); add --hostfile HOSTS or drop --backend.")
    group = {"nproc": args.nproc, "hostfile": args.hostfile, "backend": args.backend}
    overrides = args.overrides if resume else None
    if args.json:
        result = api.run(cfg, run_dir, resume=resume, on_event=_show_json, stop=stop, overrides=overrides, **group)
    elif args.quiet:
        result = api.run(cfg, run_dir, resume=resume, stop=stop, overrides=overrides, **group)
    else:
        from smolmac import _blas
        from smolmac.progress import ProgressView

        view = ProgressView(run_dir)
        if _blas.status == "absent":
            view.console.print(f"[yellow]{_blas.HINT}[/]")
        view.console.print(f"run dir: {run_dir}")
        with view:
            result = api.run(cfg, run_dir, resume=resume, on_event=view, stop=stop, overrides=overrides, **group)
        if cfg.stages:
            from smolmac.pipeline import format_stage_table

            view.console.print(format_stage_table(run_dir), highlight=False, soft_wrap=True)
    return EXIT_STOPPED if result.stopped else 0


def _memory_line(info: dict) -> str:
    adapters = ", ".join(f"{n} {a['mb']:.2f} MB" for n, a in info["adapters"].items())
    return f"{info['base']['model']}: base {info['base']['mb']:.2f} MB" + (f"; adapters {adapters}" if adapters else "") + f"; answering: {info['active'] or 'the base'}"


def cmd_generate(args) -> int:
    from smolmac import api
    from smolmac.adapters import full_weights, parse_adapter_specs, pick_weights

    if not args.prompt.strip():
        raise UserError("--prompt: the prompt is empty; give some text, e.g. --prompt \"Hi\".")
    model = args.model
    if not args.adapter:
        pick_weights(None, args.pick)  # --pick best needs a run dir
    adapters = {name: str(pick_weights(path, args.pick)) for name, path in parse_adapter_specs(args.adapter).items()}
    full = full_weights(next(iter(adapters.values()))) if len(adapters) == 1 and "=" not in args.adapter[0] else None
    if full is not None:  # a full fine-tune run: its model/ (or model-best/) is the model
        model, adapters = str(full), {}
    use = args.use
    if use is None and len(adapters) > 1:
        raise UserError(f"--use: {len(adapters)} adapters are loaded ({', '.join(adapters)}); choose the one that answers with --use NAME (or --use none for the base).")
    if use is None:
        use = next(iter(adapters), None)
    elif use.lower() == "none":
        use = None
    elif use not in adapters:
        from smolmac.errors import did_you_mean

        raise UserError(f"--use: no adapter is named '{use}'{did_you_mean(use, adapters)}; choose one of {', '.join(adapters) or 'none'} (or none for the base).")
    handle = api.load(model, adapters, dtype=args.dtype).use(use)
    if adapters:
        print(_memory_line(handle.inspect()), file=sys.stderr)
    for piece in handle.stream(args.prompt, max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p, chat=False if args.raw else None):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_export(args) -> int:
    from smolmac import api

    out = api.export(args.run_dir, args.format, args.to, dtype=args.dtype, overwrite=args.overwrite, on_message=print,
                     quantize=args.quantize, group_size=args.group_size, with_base=args.with_base, pick=args.pick)
    print(f"exported {args.format} → {out}")
    return 0


def cmd_upload(args) -> int:
    from smolmac import api

    api.upload(args.dir, args.repo, private=args.private, dry_run=args.dry_run, message=args.message, on_message=print)
    return 0


def cmd_adapters(args) -> int:
    from smolmac import api

    out = api.combine(args.adapters, args.weights, args.method, args.rank, args.to, args.format, args.overwrite, on_message=print)
    print(f"combined adapter ({args.format}) → {out}")
    return 0


def cmd_bench(args) -> int:
    from smolmac import api

    api.bench(args.what, size=args.size, steps=args.steps, batch_size=args.batch_size, out=args.out, on_message=print, work=args.work)
    return 0


def cmd_eval(args) -> int:
    from smolmac import api

    api.evaluate(args.base, args.adapter, args.tasks, limit=args.limit, include_path=args.include_path, batch_size=args.batch_size,
                 dtype=args.dtype, num_fewshot=args.num_fewshot, chat_template=args.chat_template, out=args.out, on_message=print)
    return 0


def cmd_launch_check(args) -> int:
    from smolmac.hosts import launch_check

    return 0 if launch_check(args.hostfile, args.recipe, args.backend, on_message=print) == 0 else 1


def cmd_runs(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from smolmac import api
    from smolmac.pipeline import headline

    folder = Path(args.dir or "runs")
    if args.dir is not None and not folder.is_dir():
        raise UserError(f"runs: {folder} {'is a file' if folder.exists() else 'does not exist'}; give the folder that holds your run directories (default runs/).")
    if not folder.is_dir():
        print("no runs yet in runs/; start one with `smolmac train RECIPE`.")
        return 0

    def step(r):
        if r["status"] == "pending" or (r.get("method") == "tokenizer" and not r.get("total_steps")):
            return "-"
        return f"{r['step']}/{r['total_steps'] or '?'}"

    table = Table("run", "status", "method", "model", "step", "loss", "learned")
    for r in api.runs(folder):
        spec = r["model"].get("new") if isinstance(r["model"], dict) else None
        model = f"new {spec.get('preset', 'nano')}" if isinstance(spec, dict) else str(r["model"])  # {new: {preset: micro}}
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else ""
        if r.get("stages"):  # a pipeline: its row says which stage is current, then one row per stage
            table.add_row(r["name"], r["status"], "pipeline", model, f"stage {r['step']}/{r['total_steps']}", loss, f"now: {r['current']}" if r["status"] != "finished" else "")
            for s in r["stages"]:
                table.add_row(f"  {s['label']}", s["status"], s["method"] or "-", "", step(s), f"{s['loss']:.4f}" if s["loss"] is not None else "", headline(s))
        else:
            table.add_row(r["name"], r["status"], str(r["method"]), model, step(r), loss, headline(r))
    Console().print(table)
    return 0


def cmd_recipes(args) -> int:
    from smolmac.api import recipes

    rows = recipes(args.dir)
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        kind = "pipeline" if r["pipeline"] else "run"
        print(f"{r['name']:<{width}}  {kind:<8}  {r['about']}" + ("" if r["shipped"] else f"  ({r['path']})"))
    print("\nrun one with: smolmac train NAME")
    return 0


def cmd_inspect(args) -> int:
    from smolmac.api import inspect
    from smolmac.inspection import format_report

    report = inspect(args.target, tokens=args.tokens, neighbours=args.neighbours, top=args.top)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0


def cmd_tui(args) -> int:
    from smolmac.tui.app import run_app

    run_app(getattr(args, "runs", "runs"), getattr(args, "recipes", "recipes"))
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "export": cmd_export, "upload": cmd_upload, "adapters": cmd_adapters,
            "bench": cmd_bench, "eval": cmd_eval, "launch-check": cmd_launch_check, "runs": cmd_runs, "recipes": cmd_recipes,
            "inspect": cmd_inspect, "tui": cmd_tui, None: cmd_tui}


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, one line already printed)
        return e.code if isinstance(e.code, int) else 0
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints already written are kept.", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: not enough memory for this run; lower train.batch_size or train.max_seq_len, set train.grad_checkpoint: true, or use a 4-bit (QLoRA) base.", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:
        from smolmac.storage import is_write_failure, write_error

        if isinstance(e, RuntimeError) and ("memory" in str(e).lower() or "malloc" in str(e).lower()):
            print("error: not enough memory for this run; lower train.batch_size or train.max_seq_len, set train.grad_checkpoint: true, or use a 4-bit (QLoRA) base.", file=sys.stderr)
            return 2
        if is_write_failure(e):  # a write no module wrapped: still one sentence (a full disk, ...)
            print(f"error: {write_error(getattr(e, 'filename', None) or 'a file being written', e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
