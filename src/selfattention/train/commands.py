"""What ``selfattention train`` and ``selfattention generate`` do with their parsed arguments."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from .speed import Speed

# argparse name → TrainConfig field
OPTIONS = {"steps": "steps", "batch_size": "batch_size", "model": "model", "seed": "seed",
           "checkpoint_every": "checkpoint_every", "eval_every": "eval_every", "keep": "keep",
           "d_model": "d_model", "layers": "num_layers", "heads": "num_heads", "d_ff": "d_ff",
           "positions": "positions", "norm": "norm", "lr": "lr", "decay_steps": "decay_steps",
           "min_len": "min_len", "max_len": "max_len", "longer_len": "longer_len", "context": "context",
           "dropout": "dropout"}


def _given(args: argparse.Namespace) -> dict[str, object]:
    return {field: getattr(args, opt) for opt, field in OPTIONS.items() if getattr(args, opt) is not None}


def _peek_config(out: Path):
    """The config of the newest checkpoint whose state.json reads (for options not given on --resume)."""
    from .checkpoint import CheckpointError, listing, read_state
    from .config import TrainConfig

    for p in listing(out):
        try:  # read as a checkpoint is (a regular file, bounded, checked): never a FIFO's hang
            return TrainConfig.from_dict(read_state(p)["config"]).check()
        except (CheckpointError, OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
    return None


def make_config(args: argparse.Namespace):
    """TrainConfig from the task's defaults (or, on --resume, the checkpoint's) and the options given."""
    from .config import TrainConfig
    from .tasks import TASKS, get_task
    from .text import read_text

    task = get_task(args.task)
    if not task.from_file and args.text:
        readers = " or ".join(name for name, row in TASKS.items() if row.from_file)
        raise UsageError(f"--text is for the {readers} task; {args.task} makes its own data")
    given = _given(args)
    base = _peek_config(Path(args.out)) if args.resume else None
    if base is not None and base.task != args.task:
        raise UsageError(f"--resume: {args.out} holds a run of task {base.task!r}, not {args.task!r}")
    stored = task.from_file and not args.text
    if stored:
        if base is None or not base.text:
            raise UsageError(f"the {args.task} task needs --text FILE (a UTF-8 text file to learn from)")
        args.text = base.text  # resuming: the file the run was started with (its hash is checked)
    values = base.to_dict() if base is not None else {"task": args.task, **task.defaults}
    values.update(given)
    text = None
    if task.from_file:
        try:
            text, sha = read_text(args.text)
        except InputError as err:
            if not stored:
                raise
            raise InputError(f"{err} (the file this run was started with; give --text FILE where it is "
                             "now)") from None
        # Stored whole: a resume from any folder finds it (relative, it named another file there).
        values.update(text=os.path.abspath(args.text), text_sha256=sha)
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names}).check(), text


def train_command(args: argparse.Namespace) -> int:
    import torch

    from .distributed import Dist, PeerError, barrier, setup, teardown

    if args.out is None:
        args.out = str(Path("runs") / args.task)
    config, text = make_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = Dist(timeout_s=args.timeout)
    try:
        dist = setup(args.timeout)
        from .loop import run
        from .speed import using

        out = Path(args.out)
        with using(speed_of(args)):
            run(config, out, resume=args.resume, dist=dist, echo=print,
                progress=False if args.no_progress else None, text=text,
                finish=lambda trainer: _finish(trainer, out, pictures=not args.no_pictures),
                context_parallel=args.context_parallel)
        barrier(dist)  # no process leaves the group while another still uses it
    except PeerError as err:
        print(f"selfattention: error: {err}; stopping (continue from the last checkpoint with --resume)",
              file=sys.stderr, flush=True)
        if dist.world > 1:
            # The group is broken: its threads can abort the interpreter's exit ("terminate called
            # without an active exception", status -6). Checkpoints are written atomically; leave now.
            sys.stdout.flush()
            os._exit(1)
        return 1
    finally:
        try:
            teardown(dist)
        except Exception:  # a group left by an error cannot always be torn down; the process is ending
            pass
    return 0


def speed_of(args: argparse.Namespace) -> Speed:
    """The speed-ups' switches of --compile/--no-compile, --no-fused-adam and --no-bf16."""
    from .speed import Speed

    compile_ = False if args.no_compile else (True if args.compile else None)
    return Speed(compile=compile_, fused_adam=not args.no_fused_adam, bf16=not args.no_bf16)


def summary(trainer) -> str:
    """The last line of a run: its step, its last evaluation (named when it was not at this step;
    never NaN) and its seconds."""
    import math

    from .metrics import fixed
    from .tasks import get_task

    r = trainer.last_record or {}
    c = trainer.config

    def good(key: str) -> bool:
        v = r.get(key)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    when = "" if r.get("step") == trainer.step else f" (evaluated at step {r.get('step')})"
    answers = not get_task(c.task).from_file  # scored by whole answers; a text model by its loss
    if answers and good("accuracy"):
        what = (f"held-out accuracy {r['accuracy']:.3f} (lengths {c.min_len}-{c.max_len})"
                + (f", longer {r['longer_accuracy']:.3f}" if good("longer_accuracy") else "") + when)
    elif not answers and good("eval_loss"):
        what = f"eval_loss {fixed(r['eval_loss'], 4)}{when}"
    else:
        what = "no evaluation yet"
    plan = getattr(trainer, "plan", None)
    how = ""
    if plan is not None:
        first = trainer.first_step_s
        compiling = f", its first step {fixed(first, 1)} s CPU with compiling" \
            if plan.compile and first is not None else ""
        failed = getattr(trainer.compiled_loss, "failed", None)
        how = f" ({plan.describe()}{compiling})" if not failed else " (eager after torch.compile failed)"
    return f"done: step {trainer.step}, {what}, {fixed(trainer.elapsed, 1)} s{how}"


def _finish(trainer, out: Path, pictures: bool) -> None:
    c = trainer.config
    print(summary(trainer))
    if pictures:
        from .report import write_pictures

        for line in write_pictures(out, title=f"{c.model} on {c.task}"):
            print(line)


def generate_command(args: argparse.Namespace) -> int:
    import torch

    from .tasks import get_task
    from .trained import continue_text, load_trained

    # One token at a time is a chain of tiny operations: a second thread only adds wake-ups. Measured
    # (benchmarks/kv_cache.py, 512 tokens, text-default model): 1,629 tokens/s on 1 thread against
    # 688-1,279 on 2 (idle threads sleeping) and 1,279 on 2 (spinning), on a 2-core machine.
    torch.set_num_threads(1)

    t = load_trained(args.dir)
    task = get_task(t.task)
    max_new = task.max_new(t.config) if args.max_new is None else args.max_new
    temperature = task.temperature if args.temperature is None else args.temperature
    t.prompt_for(args.prompt)  # a prompt the task cannot take is an error before any work or warning
    note = task.length_warning(args.prompt, t.config)
    if note is not None:
        warnings.warn(note, stacklevel=1)
    out = continue_text(t, args.prompt, max_new, temperature=temperature, seed=args.seed,
                        use_cache=not args.no_cache)
    print(shown(task.printed(args.prompt, out)))
    return 0


def shown(text: str) -> str:
    """``text`` for the terminal: line breaks kept (a text model writes lines), every other control
    or format character escaped (ESC, BEL, a carriage return, U+202E, …)."""
    from .._text import printable

    return "\n".join(printable(line) for line in text.split("\n"))
