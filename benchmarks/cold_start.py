"""Cold start of ``selfattention explain "I am enjoying this lecture"``: import, load, compute.

Issue 3's target: under 3 s on the project's machines. Each measurement is a fresh Python process
(nothing cached in memory but the OS's file cache, which a user's second run also has). The table
gives the median wall time of the whole command, then a breakdown measured stage by stage in fresh
processes (medians), then the slowest imports from ``python -X importtime``, so a reader sees what
dominates.

If ``explain`` does not run the pretrained model (it prints no "all-MiniLM-L6-v2"), the command
timed instead is ``PretrainedModel()`` + one encoder pass with ``need_weights``, and the table says so.

    python benchmarks/cold_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = "I am enjoying this lecture"
COMMAND = [sys.executable, "-m", "selfattention.cli", "explain", TEXT]
FALLBACK = f"""
import torch
from selfattention.models.pretrained import PretrainedModel
m = PretrainedModel()
torch.set_num_threads(1)
with torch.inference_mode():
    b = m.encode([{TEXT!r}])
    m.encoder(b.input_ids, b.lengths, need_weights=True, output_hidden_states=True)
"""

# One fresh process, timing each stage in order; prints a JSON dict of seconds.
STAGES = f"""
import json, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import selfattention, selfattention.cli, selfattention.explain, selfattention.models.heads
t.append(time.perf_counter())
from selfattention.models.pretrained import PretrainedModel
m = PretrainedModel()
t.append(time.perf_counter())
torch.set_num_threads(1)  # as the explain command does for one sentence
with torch.inference_mode():
    b = m.encode([{TEXT!r}])
    m.encoder(b.input_ids, b.lengths, need_weights=True, output_hidden_states=True)
t.append(time.perf_counter())
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    rc = selfattention.cli.main(["explain", {TEXT!r}])
t.append(time.perf_counter())
assert rc == 0, rc
names = ["import torch", "import selfattention (cli, explain, models)", "PretrainedModel() load",
         "encode + one encoder pass, need_weights (1 thread)",
         "explain again in-process (load+compute+print)"]
print(json.dumps(dict(zip(names, [b - a for a, b in zip(t, t[1:])]))))
"""


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed


def top_imports(cmd: list[str], n: int) -> list[tuple[str, float]]:
    """The n slowest packages (top-level names, at any depth) that ``cmd`` imports, under
    ``python -X importtime``: cumulative seconds, so a package includes what it imports."""
    err = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True).stderr
    best: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        name = name.strip()
        if "." not in name and not name.startswith("_"):
            best[name] = max(best.get(name, 0.0), int(cumulative) / 1e6)
    return sorted(best.items(), key=lambda x: -x[1])[:n]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    shown = subprocess.run(COMMAND, capture_output=True, text=True)
    pretrained = shown.returncode == 0 and "all-MiniLM-L6-v2" in shown.stdout
    cmd = COMMAND if pretrained else [sys.executable, "-c", FALLBACK]
    label = (f'`selfattention explain "{TEXT}"`' if pretrained else
             "`PretrainedModel()` + one encoder pass with need_weights (explain does not run the "
             "pretrained model yet)")

    runs = [wall(cmd) for _ in range(args.repeats)]
    bare = [wall([sys.executable, "-c", "pass"]) for _ in range(args.repeats)]
    torch_proc = [wall([sys.executable, "-c", "import torch"]) for _ in range(args.repeats)]
    torch_exit = [wall([sys.executable, "-c", "import torch, os; os._exit(0)"]) for _ in range(args.repeats)]
    stages: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", STAGES], capture_output=True, text=True, check=True)
        for name, s in json.loads(out.stdout).items():
            stages.setdefault(name, []).append(s)

    import torch  # only for the machine line

    sys.path.insert(0, str(Path(__file__).parent))
    from embed_throughput import cpu_name

    print(f"cold start of {label}, {args.repeats} fresh processes each, medians")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
          f"Python {platform.python_version()}, torch {torch.__version__}\n")
    print("| what | median s | min s |")
    print("|---|---:|---:|")
    print(f"| **whole command, fresh process** | **{statistics.median(runs):.2f}** | {min(runs):.2f} |")
    print(f"| Python start (`python -c pass`) | {statistics.median(bare):.2f} | {min(bare):.2f} |")
    print(f"| `python -c 'import torch'`, whole process | {statistics.median(torch_proc):.2f} | "
          f"{min(torch_proc):.2f} |")
    print(f"| the same, ending with `os._exit(0)` (no interpreter teardown) | "
          f"{statistics.median(torch_exit):.2f} | {min(torch_exit):.2f} |")
    print("| *stages in one fresh process:* | | |")
    for name, s in stages.items():
        print(f"| {name} | {statistics.median(s):.2f} | {min(s):.2f} |")
    print("\nslowest packages the command imports (`python -X importtime`, one run, cumulative s: a "
          "package includes what it imports):\n")
    print(", ".join(f"{name} {t:.2f}" for name, t in top_imports(cmd, 8)))


if __name__ == "__main__":
    main()
