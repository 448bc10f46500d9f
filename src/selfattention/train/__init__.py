"""Learning attention: tasks, the training loop, checkpoints, torch.distributed set-up.

    from selfattention.train import TrainConfig, run, load_trained
    run(TrainConfig(task="reverse", steps=2000), "runs/reverse")   # what `selfattention train` does
    t = load_trained("runs/reverse")     # TrainedModel: .model, .config, .vocab, .step, .path

Importing this package is cheap (the command line imports it to add its subcommands): the names
below load their modules, and torch, on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig
    from .loop import Trainer, run
    from .trained import TrainedModel, continue_text, load_trained

_NAMES = {"TrainConfig": "config", "Trainer": "loop", "run": "loop", "TrainedModel": "trained",
          "continue_text": "trained", "load_trained": "trained"}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "TrainedModel", "Trainer", "continue_text", "load_trained", "run"]
