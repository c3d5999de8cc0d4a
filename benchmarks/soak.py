"""Soak: a long run of the nano model, to see that memory stays flat and the run dir stays small.

Pretrains the `nano` preset (its own 416-token BPE tokenizer, as in the quickstart) on the quickstart corpus for 3,000
steps with an evaluation and a checkpoint every 100 steps (two checkpoints kept), and reports the
process's resident memory (RSS) at the start, middle and end, its largest value, and the size of
the run dir. Not part of the test suite.

    python benchmarks/soak.py [--steps 3000] [--every 100] [--run-dir DIR] [--out soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def rss_bytes() -> int:
    """Resident set size of this process now (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=100, help="Steps between evaluations and checkpoints.")
    p.add_argument("--run-dir", help="Run directory (default: a fresh temporary folder, removed after).")
    p.add_argument("--out", help="Write the results as JSON here.")
    args = p.parse_args(argv)

    import smolmac
    from smolmac.storage import dir_size, human

    tmp = None if args.run_dir else tempfile.TemporaryDirectory(prefix="smolmac-soak-")
    run_dir = Path(args.run_dir or Path(tmp.name) / "run")
    recipe = {
        "name": "soak", "method": "pretrain", "model": {"new": {"preset": "nano"}},
        "tokenizer": {"vocab_size": 416},
        "data": {"train": "quickstart:corpus.txt", "valid": 0.02},
        "train": {"steps": args.steps, "batch_size": 8, "max_seq_len": 128, "lr": 3e-3, "warmup": 50, "report_every": 50},
        "eval": {"every": args.every, "batches": 4},
        "save": {"every": args.every, "keep": 2},
    }
    samples: list[tuple[int, int, float]] = []  # (step, rss bytes, seconds)
    tic = time.perf_counter()

    def on_event(e):
        if e["type"] == "checkpoint" or (e["type"] == "train" and e["step"] == 1):
            samples.append((e["step"], rss_bytes(), time.perf_counter() - tic))
            if e["type"] == "checkpoint":
                print(f"step {e['step']:5d}  rss {human(samples[-1][1])}  {samples[-1][2]:.0f}s", flush=True)

    run = smolmac.train(recipe, run_dir=run_dir, on_event=on_event)
    elapsed = time.perf_counter() - tic
    size = dir_size(run_dir)

    def at(step):
        return min(samples, key=lambda s: abs(s[0] - step))

    start, middle, end = at(1), at(args.steps // 2), at(args.steps)
    last_train = run.last("train")
    result = {
        "steps": args.steps, "every": args.every, "elapsed_s": round(elapsed, 1),
        "rss_start_mb": round(start[1] / 1e6, 1), "rss_middle_mb": round(middle[1] / 1e6, 1),
        "rss_end_mb": round(end[1] / 1e6, 1), "rss_max_mb": round(max(s[1] for s in samples) / 1e6, 1),
        "rss_growth_first_checkpoint_to_end_mb": round((end[1] - samples[1][1]) / 1e6, 1) if len(samples) > 1 else None,
        "run_dir_bytes": size, "final_loss": last_train and last_train["loss"],
        "final_val_loss": (run.last("eval") or {}).get("val_loss"),
        "checkpoints_kept": sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    print(f"\nRSS at step {start[0]}: {human(start[1])}, step {middle[0]}: {human(middle[1])}, step {end[0]}: {human(end[1])} "
          f"(max {human(max(s[1] for s in samples))}); run dir {human(size)}; {elapsed:.0f}s")
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
