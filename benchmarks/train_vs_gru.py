"""Attention against recurrence in training: the default Transformer and the GRU baseline of about
the same parameter count, on the same task, batches and budget.

Both train in this one process, one optimizer step each in turn, every model with its own clock
(its steps and evaluations only), so load on a shared machine slows both alike. Each is evaluated
every --eval-every steps on the same held-out sequences (whole-sequence accuracy) until its clock
reaches --seconds. Prints accuracy against wall-clock seconds and against steps, and the first
time each reached 99 %; --png draws the curves.

    python benchmarks/train_vs_gru.py [--task reverse] [--seconds 180] [--png train_vs_gru.png]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import _quiet_threads  # noqa: F401 (before torch: idle threads sleep)
import torch

from selfattention.train.config import TrainConfig
from selfattention.train.data import make_data
from selfattention.train.loop import Trainer
from selfattention.transformer import parameter_count


def at_or_before(records: list[dict], key: str, x: float) -> dict | None:
    before = [r for r in records if r[key] <= x]
    return before[-1] if before else None


def row(name: str, cells: list[dict | None]) -> str:
    return f"| {name} accuracy | " + " | ".join(f"{c['accuracy']:.3f}" if c else "–" for c in cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="reverse", choices=("copy", "reverse", "sort", "recall"))
    ap.add_argument("--seconds", type=float, default=180.0, help="wall-clock budget of each model")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--png", help="write the curves here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    extra = {"max_len": 8, "longer_len": 12} if a.task == "recall" else {}
    trainers, clocks, records = {}, {}, {}
    for name in ("transformer", "gru"):
        cfg = TrainConfig(task=a.task, model=name, steps=10**9, eval_every=a.eval_every, **extra)
        trainers[name] = Trainer(cfg, make_data(cfg))
        clocks[name], records[name] = 0.0, []
    while any(clocks[n] < a.seconds for n in trainers):
        for name, t in trainers.items():
            if clocks[name] >= a.seconds:
                continue
            start = time.perf_counter()
            t.train_step()
            if t.step % a.eval_every == 0:
                rec = t.evaluate(t.train_loss())
            clocks[name] += time.perf_counter() - start
            if t.step % a.eval_every == 0:
                rec["elapsed_s"] = round(clocks[name], 2)
                records[name].append(rec)

    print(f"# {a.task}: Transformer vs GRU, {a.seconds:g} s of wall clock each (evaluation included), "
          f"steps interleaved in one process")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch {trainers['gru'].config.batch_size}, lengths "
          f"{trainers['gru'].config.min_len}-{trainers['gru'].config.max_len}")
    print()
    print("| model | parameters | steps in budget | steps/s | accuracy at the end | first ≥ 99 % |")
    print("|---|---|---|---|---|---|")
    for name, t in trainers.items():
        recs = records[name]
        hit = next((r for r in recs if r["accuracy"] >= 0.99), None)
        first = f"step {hit['step']}, {hit['elapsed_s']:.0f} s" if hit else "not reached"
        print(f"| {name} | {parameter_count(t.model):,} | {t.step} | {t.step / clocks[name]:.1f} | "
              f"{recs[-1]['accuracy']:.3f} | {first} |")
    print()
    marks = [a.seconds * f for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1)]
    print("| seconds | " + " | ".join(f"{m:.0f}" for m in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for name in trainers:
        print(row(name, [at_or_before(records[name], "elapsed_s", m) for m in marks]))
    last = min(records[n][-1]["step"] for n in trainers)
    e = a.eval_every
    steps = sorted({max(e, round(last * f / e) * e) for f in (0.1, 0.25, 0.5, 1)})
    print()
    print("| step | " + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name in trainers:
        print(row(name, [at_or_before(records[name], "step", s) for s in steps]))
    if a.png:
        from selfattention.train.report import _save, plot_curves

        _save(plot_curves(records, f"{a.task}: Transformer vs GRU, same parameters and budget"), Path(a.png))
        print(f"\nwrote {a.png}")


if __name__ == "__main__":
    main()
