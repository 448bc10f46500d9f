"""``train``'s speed-ups against the path before them: the text recipe and ``train reverse``.

Two runs at the same time, side by side: "old" (--no-compile --no-fused-adam --no-bf16, the path
before the speed-ups, bit for bit) and "new" (--compile: fused AdamW, the compiled step, bfloat16
where the CPU has it; the default compiles only from ~2x the recipe's work), each in its own
process on --threads threads, first on 1 thread, then on 2. The text recipe: the usual small
character-level GPT on a CPU (4 layers, 4 heads, D = 128, feed-forward 512, context 64, batch
12, 2,000 steps, AdamW at lr 1e-3 with warm-up and cosine decay, no dropout), evaluated every
--eval-every steps on windows of the last 10 % of --text. Then ``train reverse`` with its
defaults, old and new, to the first held-out accuracy ≥ 0.99.

Time is CPU time of each run's process and of the C++ compiler runs it waits for (the machine
is shared, so wall time measures the neighbours too), compilation included: Inductor compiles in
the process (TORCHINDUCTOR_COMPILE_THREADS=1) and, unless --warm-cache, with an empty cache of
its own, so the first compiled step pays the whole compilation. The load average is recorded with every run.
Writes --out/train_text_speed.json (every evaluation: step, held-out loss, CPU and wall seconds)
and --out/train_text_speed.png (held-out loss against CPU seconds).

    python benchmarks/train_text_speed.py --text tinyshakespeare.txt [--threads 1 2] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = dict(d_model=128, num_layers=4, num_heads=4, d_ff=512, context=64, batch_size=12, decay_steps=2000,
              lr=1e-3, dropout=0.0)
PATHS = ("old", "new")


def children_seconds() -> float:
    """CPU seconds of this process's finished children: Inductor's C++ compiler runs."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the compiler's, when compiling)."""
    return time.process_time() + children_seconds()


def child(a: argparse.Namespace) -> None:
    """One run in this process; prints its JSON record on the last line."""
    import _quiet_threads  # noqa: F401 (before torch: idle threads sleep)
    import torch

    from selfattention.train import speed
    from selfattention.train.config import TrainConfig
    from selfattention.train.loop import run
    from selfattention.train.text import read_text

    a.threads = a.threads[0]  # (one number in a child)
    torch.set_num_threads(a.threads)
    if a.task == "text":
        text, sha = read_text(a.text)
        config = TrainConfig(task="text", text=os.path.abspath(a.text), text_sha256=sha, steps=a.steps,
                             eval_every=a.eval_every, eval_size=64, **RECIPE).check()
    else:
        text, config = None, TrainConfig(task=a.task, steps=a.steps, eval_every=a.eval_every).check()
    evals: list[dict] = []
    cpu0, wall0 = cpu_seconds(), time.perf_counter()

    def echo(line: str) -> None:  # one line per evaluation: "step 200/2000  loss …  eval_loss 2.1234 …"
        fields = dict(re.findall(r"(?:^|  )(step|eval_loss|accuracy)\s+(\d[\d.]*)", line))
        if "eval_loss" in fields:
            evals.append({"step": int(fields["step"]), "eval_loss": float(fields["eval_loss"]),
                          "accuracy": float(fields["accuracy"]) if "accuracy" in fields else None,
                          "cpu_s": cpu_seconds() - cpu0, "wall_s": time.perf_counter() - wall0,
                          "load": os.getloadavg()[0]})

    if a.prime:  # fill Inductor's cache with this run's graphs: compile however short the run is
        speed.COMPILE_MIN_FLOP = 0
    # "new": the speed-ups with the step compiled whatever the run's length (--compile; the default
    # compiles only from ~2x the recipe's work, where a first compilation repays itself)
    chosen = speed.EXACT if a.path == "old" else speed.Speed(compile=True)
    with speed.using(chosen), tempfile.TemporaryDirectory() as out:
        trainer = run(config, Path(out) / "run", echo=echo, progress=False, text=text)
    print(json.dumps({"path": a.path, "task": a.task, "threads": a.threads, "plan": trainer.plan.describe(),
                      "first_step_cpu_s": trainer.first_step_s, "cpu_s": cpu_seconds() - cpu0,
                      "compiler_cpu_s": children_seconds(),
                      "wall_s": time.perf_counter() - wall0, "evals": evals}))


def _child(a: argparse.Namespace, path: str, task: str, threads: int, steps: int, eval_every: int,
           cache: str, prime: bool = False) -> subprocess.Popen:
    here = str(Path(__file__).parent)
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1", OMP_NUM_THREADS=str(threads),
               TORCHINDUCTOR_CACHE_DIR=cache)
    env["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", "--path", path, "--task", task, "--threads", str(threads),
           "--steps", str(steps), "--eval-every", str(eval_every)] + (["--prime"] if prime else [])
    cmd += ["--text", a.text] if a.text else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(path: str, p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    if p.returncode:
        sys.exit(f"the {path} run failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def side_by_side(a: argparse.Namespace, task: str, threads: int, steps: int, eval_every: int,
                 warm: str | None) -> dict:
    """Old and new at the same time, each in its own process; ``warm``: Inductor's cache, already
    filled for this task (else each run starts with an empty one)."""
    with tempfile.TemporaryDirectory() as cold:
        procs = {path: _child(a, path, task, threads, steps, eval_every, warm or os.path.join(cold, path))
                 for path in PATHS}
        return {path: _result(path, p) for path, p in procs.items()}


def _text_row(a: argparse.Namespace, threads: int, cache: str, warm: str | None) -> dict:
    load = os.getloadavg()
    runs = side_by_side(a, "text", threads, a.steps, a.eval_every, warm)
    old, new = runs["old"], runs["new"]
    goal = old["evals"][-1]["eval_loss"]  # today's loss at the end
    hit = first_at(new["evals"], "eval_loss", goal, below=True)
    row = {"threads": threads, "cache": cache, "load_before": load, "load_after": os.getloadavg(),
           "runs": runs, "old_final_loss": goal, "new_final_loss": new["evals"][-1]["eval_loss"],
           "ratio_total": new["cpu_s"] / old["cpu_s"],
           "ratio_to_old_loss": hit["cpu_s"] / old["cpu_s"] if hit else None}
    reached = f", old's loss reached at {row['ratio_to_old_loss']:.3f}" if hit else ""
    print(f"text, {threads} thread(s), {cache} cache, load {load[0]:.1f}: old {old['cpu_s']:.1f} s CPU → "
          f"held-out {goal:.4f}; new ({new['plan']}, first step {new['first_step_cpu_s']:.1f} s) "
          f"{new['cpu_s']:.1f} s → {row['new_final_loss']:.4f}; ratio {row['ratio_total']:.3f}{reached}",
          flush=True)
    return row


def _reverse_row(a: argparse.Namespace, threads: int, cache: str, warm: str | None) -> dict:
    load = os.getloadavg()
    runs = side_by_side(a, "reverse", threads, a.reverse_steps, 100, warm)
    hits = {p: first_at(r["evals"], "accuracy", 0.99, below=False) for p, r in runs.items()}
    row = {"threads": threads, "cache": cache, "load_before": load, "load_after": os.getloadavg(),
           "runs": runs, "cpu_s_to_0.99": {p: h["cpu_s"] if h else None for p, h in hits.items()}}
    if all(hits.values()):
        row["ratio"] = hits["new"]["cpu_s"] / hits["old"]["cpu_s"]
    ratio = f", ratio {row['ratio']:.3f}" if "ratio" in row else ""
    print(f"reverse, {threads} thread(s), {cache} cache, load {load[0]:.1f}: CPU s to accuracy ≥ 0.99: "
          f"{row['cpu_s_to_0.99']}{ratio}", flush=True)
    return row


def first_at(evals: list[dict], key: str, goal: float, below: bool) -> dict | None:
    reached = (e for e in evals if e[key] is not None and (e[key] <= goal if below else e[key] >= goal))
    return next(reached, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="the text file (tiny Shakespeare for the recipe)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--reverse-steps", type=int, default=2000, help="train reverse's steps (0: skip it)")
    ap.add_argument("--caches", nargs="+", choices=("cold", "warm"), default=["cold", "warm"],
                    help="Inductor's cache: empty (a first run's compilation), or filled beforehand")
    ap.add_argument("--out", default=".", help="folder of the JSON and the PNG")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    ap.add_argument("--task", default="text", help=argparse.SUPPRESS)
    ap.add_argument("--prime", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    if not a.text:
        ap.error("--text PATH is required")
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    result: dict = {"machine": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                    "recipe": RECIPE, "steps": a.steps, "text": [], "reverse": []}
    with tempfile.TemporaryDirectory() as warm:
        for cache in a.caches:
            filled = warm if cache == "warm" else None
            if filled:  # the graphs compiled once, before any timing (the code depends on the threads)
                jobs = [("text", n) for n in a.threads] + [("reverse", a.threads[0])] * bool(a.reverse_steps)
                primes = [_child(a, "new", task, n, 2, 1000, warm, prime=True) for task, n in jobs]
                for p in primes:
                    _result("priming", p)
            for threads in a.threads:
                result["text"].append(_text_row(a, threads, cache, filled))
            if a.reverse_steps:
                result["reverse"].append(_reverse_row(a, a.threads[0], cache, filled))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_text_speed.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "train_text_speed.png")
    print(f"wrote {out / 'train_text_speed.json'} and {out / 'train_text_speed.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["text"]
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(6 * max(1, len(rows)), 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=False):
        for path_name, style in (("old", "--"), ("new", "-")):
            r = row["runs"][path_name]
            ax.plot([e["cpu_s"] for e in r["evals"]], [e["eval_loss"] for e in r["evals"]], style, marker="o",
                    label=f"{path_name} ({r['plan']}): {r['cpu_s']:.0f} s")
        ax.set_title(f"{row['threads']} thread(s), {row['cache']} cache, load {row['load_before'][0]:.1f}")
        ax.set_xlabel("CPU seconds (compilation included)")
        ax.set_ylabel("held-out loss")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"train text, the CPU recipe: {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
