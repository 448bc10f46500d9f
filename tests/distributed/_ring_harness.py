"""Spawning gloo processes for the distributed tests, with a hard deadline: a hang fails the test
(every process is killed) instead of blocking CI.

Each process joins a gloo group through a file store in the test's folder (no ports), runs one
function of this folder's modules, and saves what it returns with ``torch.save``; an exception is
saved as its type and first line. Workers use one intra-op thread: up to 4 of them share 2 cores.
"""

from __future__ import annotations

import datetime
import importlib
import multiprocessing
import time
import traceback
from pathlib import Path

import torch

DEADLINE_S = 240.0  # a whole spawn, start-up included; the group's own timeout is far shorter


def _entry(rank: int, world: int, folder: str, target: str, args: tuple, group_timeout_s: float) -> None:
    import torch.distributed as td

    torch.set_num_threads(1)
    out = Path(folder) / f"result-{rank}.pt"
    try:
        td.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world,
                              timeout=datetime.timedelta(seconds=group_timeout_s))
        module, name = target.split(":")
        result = getattr(importlib.import_module(module), name)(rank, world, *args)
    except BaseException as err:  # noqa: BLE001 (reported to the test, which fails on it)
        result = {"crashed": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
    torch.save(result, out)
    try:
        if td.is_initialized():
            td.destroy_process_group()
    except Exception:  # noqa: BLE001 (a peer may be gone on purpose)
        pass


def spawn(world: int, target: str, args: tuple, folder: Path, *, group_timeout_s: float = 30.0,
          deadline_s: float = DEADLINE_S, wait_for: int | None = None) -> list[object]:
    """Run ``target`` ("module:function", called as f(rank, world, *args)) in ``world`` gloo
    processes; return each rank's result (None for a rank that saved none). ``wait_for``: only the
    first ``wait_for`` ranks must finish (the others, killed on purpose or hung, are then killed)."""
    folder.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(r, world, str(folder), target, args, group_timeout_s),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    need = procs[: world if wait_for is None else wait_for]
    end = time.monotonic() + deadline_s
    try:
        for p in need:
            p.join(max(0.0, end - time.monotonic()))
        hung = [r for r, p in enumerate(need) if p.is_alive()]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    assert not hung, f"ranks {hung} of {world} did not finish within {deadline_s:g} s: a hang"
    results = []
    for r in range(world):
        f = folder / f"result-{r}.pt"
        results.append(torch.load(f, weights_only=False) if f.exists() else None)
    return results


_STARTED: dict[tuple[int, str], list[object]] = {}


def spawn_once(world: int, target: str, args: tuple, tmp_path_factory) -> list[object]:
    """``spawn``, once per (world, target) in this pytest process: the test modules that read the
    same processes' results share one start of them (each start costs seconds of imports)."""
    key = (world, target)
    if key not in _STARTED:
        folder = tmp_path_factory.mktemp(f"{target.replace(':', '-')}-{world}")
        _STARTED[key] = spawn(world, target, args, folder)
    return _STARTED[key]
