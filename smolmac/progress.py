"""What `smolmac train` prints while a run trains: events rendered with a rich progress bar
(loss, tok/s, memory, ETA) and one line per evaluation, warning, checkpoint and stage."""

from __future__ import annotations

from pathlib import Path


class ProgressView:
    """Renders events with a rich progress bar (loss, tok/s, memory, ETA)."""

    def __init__(self, run_dir: str | Path | None = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.run_dir = run_dir
        self.retain = [None, None]  # retain ppl at the run's start and at its last eval

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, e: dict):
        kind = e["type"]
        log = self.progress.console.print
        if kind == "start":
            self.retain = [e.get("retain_ppl"), None]
            if self.task is not None:
                self.progress.remove_task(self.task)
            if e["method"] in ("pipeline", "tokenizer"):
                return  # stage lines and the final table say what happens
            log(f"[bold]{e['method']}[/] {e['model']}: {e['trainable_params']:,} trainable parameters, {e['train_rows']} train / {e['valid_rows']} valid rows" + (f", {e['truncated_rows']} truncated" if e.get("truncated_rows") else "") + (f", {e['dtype']}" if e.get("dtype") else "") + (f"; resuming at step {e['resumed_from']}" if e.get("resumed_from") else ""))
            if e.get("memory_estimate_gb") is not None:
                log(f"{e['total_params'] / 1e6:,.1f}M parameters; estimated peak memory {e['memory_estimate_gb']:.2f} GB of {e['memory_budget_gb']:.3g} GB available" + (" (gradient checkpointing turned on to fit)" if e.get("auto_checkpoint") else ""))
            if e.get("batch_plan"):
                log(e["batch_plan"])
            if e.get("memory_suggestion"):
                log(f"[yellow]this may not fit in memory: {e['memory_suggestion']}[/]")
            if e.get("world_size", 1) > 1:
                log(f"data parallel: {e['world_size']} processes on {e['hosts']} host{'s' if e['hosts'] > 1 else ''}, {e['gradient_bytes_per_step'] / 1e6:,.2f} MB of gradients all-reduced per step")
            self.task = self.progress.add_task(e["method"], total=e["total_steps"], completed=e["step"], info="")
        elif kind == "train" and self.task is not None:
            info = f"loss {e['loss']:.4f}  lr {e['lr']:.2e}  {e['tokens_per_second']:,.0f} tok/s  {e['peak_memory_gb']:.2f} GB"
            self.progress.update(self.task, completed=e["step"], info=info)
        elif kind == "eval":
            self.retain[1] = e.get("retain_ppl", self.retain[1])
            extra = "  ".join(f"{k} {v:.4g}" for k, v in e.items() if k not in ("type", "step", "time", "val_loss", "val_ppl", "stage") and isinstance(v, (int, float)) and not isinstance(v, bool))
            val = f"val loss {e['val_loss']:.4f}" + (f", ppl {e['val_ppl']:.2f}" if e.get("val_ppl") is not None else "") + "  " if e.get("val_loss") is not None else ""
            log(f"step {e['step']}: {val}{extra}".rstrip())
        elif kind == "warning":
            from rich.text import Text

            log(Text.assemble(("warning: ", "yellow"), e["message"]))
        elif kind == "sample":
            log(f"[dim]step {e['step']} sample[/] {e['prompt']!r} → {e['completion']!r}")
        elif kind == "checkpoint":
            log(f"[dim]checkpoint {e['path']}[/]")
        elif kind == "metrics":
            from smolmac.pipeline import stage_rows

            row = stage_rows([e])[0]
            log(f"[bold]{e['stage']}-{e['name']}[/]: {row['learned']}" + (f"; kept: retain ppl {row['kept']}" if row["kept"] else ""))
        elif kind == "stage" and e.get("status") not in ("finished",):
            log(f"[bold]stage {e['stage']}-{e['name']}[/] ({e['method']}): {e['status']}")
        elif kind == "config":
            log("resuming with " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in e["changes"].items()), highlight=False)
        elif kind == "best":
            log(f"[dim]step {e['step']}: best {e['metric']} {e['value']:.4g} → {e['path']}[/]")
        elif kind == "done":
            if None not in self.retain:  # what the run cost the retain set (eval.retain)
                from smolmac.evaluation import retain_text

                log(retain_text(*self.retain))
            self.retain = [None, None]
            if e.get("stopped") and "stage" in e:
                return  # the pipeline says where it stopped
            if e.get("stopped"):
                log(f"[yellow]stopped[/] at step {e['step']}; continue with `smolmac train --resume {self.run_dir or Path(e['output']).parent}`", highlight=False)
            else:
                why = f" ({e['reason']})" if e.get("reason") else ""
                best = f"; best {e['best_metric']} {e['best_value']:.4g} at step {e['best_step']} → {e['best_output']}" if e.get("best_output") else ""
                log(f"[green]done[/]{why} → {e['output']}{best}", highlight=False)
