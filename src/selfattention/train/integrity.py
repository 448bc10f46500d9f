"""Is a checkpoint folder whole and what ``checkpoint.save`` wrote? Its digest and its state.json.

Every checkpoint holds ``SHA256SUMS`` (the format of ``sha256sum``, so ``sha256sum -c SHA256SUMS``
checks it by hand): the sha256 of each of its other files, state.json included, written last. An
edit of state.json alone, even one that keeps it consistent with itself, no longer matches. (It is
a check against damage and hand edits, not a signature: whoever rewrites SHA256SUMS too passes it,
so every field of state.json is also bounded to what a run can produce.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import time
import warnings
from pathlib import Path

import torch

from .._io import file_kind
from ..errors import ModelError
from .config import TrainConfig
from .tasks import get_task

FORMAT = "selfattention-train-checkpoint"
VERSION = 2  # 2: SHA256SUMS over every file, every field of state.json required and bounded
# 1: no SHA256SUMS (state.json holds the weights' sha256 only). Runs made before version 2 stay
# usable: their state.json is read with every field required and bounded, and a warning says its
# own bytes are not covered by a digest. A version-1 folder holding a SHA256SUMS is not one.
EARLIER = 1
_SAID_EARLIER: set[str] = set()
FILES = ("model.safetensors", "train.safetensors")
DIGEST = "SHA256SUMS"
MAX_STATE_BYTES = 32 * 1024 * 1024  # state.json: a vocabulary of every Unicode character fits in ~20 MB
# What ``save`` writes at the top of state.json (``Trainer.save``'s state and the format's fields).
STATE_KEYS = frozenset({"format", "version", "step", "files", "versions", "config", "task", "vocab",
                        "model_class", "parameters", "loss_sum", "loss_tokens", "tokens_seen", "elapsed_s",
                        "last_record", "processes", "data"})
OPTIONAL_STATE_KEYS = frozenset({"context_parallel"})  # written when a run splits its sequences (N > 1)
# What ``Trainer.evaluate`` writes in a record (metrics.jsonl's lines and state.json's last_record).
RECORD_KEYS = frozenset({"step", "loss", "eval_loss", "accuracy", "longer_loss", "longer_accuracy",
                         "char_accuracy", "lengths", "longer_lengths", "evaluated_on", "lr", "tokens",
                         "elapsed_s", "model", "processes", "context_parallel"})
MODEL_CLASSES = {"transformer": "DecoderLM", "gru": "GRULM"}
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")


class CheckpointError(ModelError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unusable) and an older one is used instead, or one of the earlier
    format is used."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_text(hashes: dict[str, str]) -> bytes:
    """SHA256SUMS's contents for {file name: sha256}."""
    return "".join(f"{h}  {name}\n" for name, h in hashes.items()).encode("ascii")


def seal(path: str | os.PathLike[str]) -> None:
    """Write SHA256SUMS of checkpoint folder ``path`` from its files as they are now (what ``save``
    does last; a test uses it to forge a checkpoint past the digest, to reach the field checks)."""
    p = Path(path)
    hashes = {name: file_sha256(p / name) for name in ("state.json", *FILES)}
    (p / DIGEST).write_bytes(digest_text(hashes))


def regular_size(f: Path) -> int:
    """The size of ``f``, a regular file (a symlink to one counts); CheckpointError when it is missing
    or anything else (a FIFO would block its reader forever, a device never ends)."""
    try:
        st = os.stat(f)
    except (FileNotFoundError, NotADirectoryError):
        where = f"{f.parent}: {f.name} is" if f.name in ("state.json", DIGEST) else f"{f}: the file is"
        raise CheckpointError(f"checkpoint {where} missing") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint {f}: is {file_kind(st.st_mode)}, not a regular file")
    return st.st_size


def _read(f: Path, most: int) -> bytes:
    size = regular_size(f)
    if size > most:
        raise CheckpointError(f"checkpoint {f}: {size} bytes, more than a {f.name} can be ({most} bytes)")
    try:
        with open(f, "rb") as fh:
            data = fh.read(most + 1)
    except OSError as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err.strerror or err})") from None
    if len(data) > most:
        raise CheckpointError(f"checkpoint {f}: more than a {f.name} can be ({most} bytes)")
    return data


def read_sums(path: Path) -> dict[str, str]:
    """{file name: sha256} from SHA256SUMS of checkpoint folder ``path``: exactly state.json and FILES."""
    f = path / DIGEST
    lines = _read(f, 1024).decode("ascii", errors="replace").splitlines()
    sums = {}
    for line in lines:
        m = _SUM_LINE.match(line)
        if not m or m.group(2) in sums:
            raise CheckpointError(f"checkpoint {f}: not what a checkpoint's {DIGEST} holds (damaged)")
        sums[m.group(2)] = m.group(1)
    if set(sums) != {"state.json", *FILES}:
        raise CheckpointError(f"checkpoint {f}: lists {sorted(sums)}, expected state.json and "
                              f"{' and '.join(FILES)}")
    return sums


def read_state(path: Path) -> dict:
    """The checked state.json of checkpoint folder ``path``: whole (its sha256 is SHA256SUMS's), of
    this format and version, every field what ``save`` writes (CheckpointError naming what is wrong)."""
    f = Path(path) / "state.json"
    data = _read(f, MAX_STATE_BYTES)
    try:
        state = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {f}: not valid JSON ({err.msg} at line {err.lineno}), "
                              "truncated or corrupted") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint (JSON nested too "
                              "deep)") from None
    except ValueError as err:  # an integer of more than 4300 digits: no run writes one
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint")
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {f}: 'version' must be an integer, got {_short(version)}")
    if version not in (EARLIER, VERSION):
        raise CheckpointError(f"checkpoint {f}: format version {version}, this program reads versions "
                              f"{EARLIER} and {VERSION}")
    if version == VERSION:
        sums = read_sums(Path(path))
        if sha256(data) != sums["state.json"]:
            raise CheckpointError(f"checkpoint {f}: changed after it was written (its sha256 does not "
                                  f"match {DIGEST})")
    elif os.path.lexists(Path(path) / DIGEST):
        raise CheckpointError(f"checkpoint {f}: says format version {EARLIER}, which has no {DIGEST}, but "
                              f"the folder holds one (state.json was changed after it was written)")
    missing = sorted(STATE_KEYS - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {f}: has no {missing[0]!r} entry")
    check_state(f, state)
    unknown = sorted(set(state) - STATE_KEYS - OPTIONAL_STATE_KEYS)
    if unknown:
        raise CheckpointError(f"checkpoint {f}: unknown fields {_short(unknown)}")
    if version == EARLIER:  # usable: its weights are checked by their sha256, its state bounded
        if str(path) not in _SAID_EARLIER:  # once per checkpoint (a resume reads it more than once)
            _SAID_EARLIER.add(str(path))
            warnings.warn(f"checkpoint {Path(path)}: of the earlier format {EARLIER} (no {DIGEST}); its "
                          "weights are checked, its state.json only by its bounds", CheckpointWarning,
                          stacklevel=3)
        return state
    for name in FILES:
        if state["files"][name]["sha256"] != sums[name]:
            raise CheckpointError(f"checkpoint {path / DIGEST}: gives another sha256 for {name} than "
                                  "state.json (one of them was changed)")
    return state


def _finite(x: object) -> bool:
    """True for JSON without NaN or infinity anywhere (json.loads accepts them; json.dumps refuses)."""
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def _int(x: object, lo: int, hi: float) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _number(x: object, lo: float, hi: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi


def _short(x: object) -> str:
    if isinstance(x, int) and abs(x) >= 10**15:  # (str() of a huge integer is refused by Python itself)
        return f"an integer of about {int(abs(x).bit_length() * math.log10(2)) + 1} digits"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "…"


def check_state(f: Path, state: dict) -> None:
    """CheckpointError naming ``f`` (a state.json) and the first field that is not what ``save`` writes.
    Counts and sums are bounded by what the run's config can produce: ``step`` ≤ its --steps; each
    step trains on B sequences of 1 … T loss tokens, so step·B ≤ tokens_seen ≤ step·B·T; loss_sum is
    a sum of cross-entropies (≥ 0), each step's below the dtype's largest number (else the run
    stopped as diverged); no run lasted longer than the time since 1970."""
    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {f}: {field!r} must be {what}, got {_short(state.get(field))}")

    config = state["config"]
    names = {name for name in TrainConfig.__dataclass_fields__}
    if not isinstance(config, dict) or set(config) != names:
        raise bad("config", "an object of every TrainConfig field")
    try:
        c = TrainConfig.from_dict(config).check()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {f}: its config cannot be used ({err})") from None
    step = state["step"]
    if not _int(step, 0, c.steps):
        raise bad("step", f"an integer ≥ 0 and at most its config's steps ({c.steps})")
    vocab = state["vocab"]
    if not isinstance(vocab, list) or not vocab or len(set(map(repr, vocab))) != len(vocab) \
            or not all(isinstance(ch, str) and len(ch) == 1 for ch in vocab):
        raise bad("vocab", "a non-empty list of distinct one-character strings")
    fixed = get_task(c.task).vocab  # None: the text file's characters
    if fixed is not None and vocab != fixed.tokens:
        raise bad("vocab", f"the {c.task} task's characters")
    files = state["files"]
    if not isinstance(files, dict) or set(files) != set(FILES) or not all(
            isinstance(v, dict) and set(v) == {"bytes", "sha256"} and _int(v["bytes"], 1, 2**63)
            and isinstance(v["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", v["sha256"])
            for v in files.values()):
        raise bad("files", "an object naming each file's bytes and sha256")
    if state["task"] != c.task:
        raise bad("task", f"its config's task {c.task!r}")
    if state["model_class"] != MODEL_CLASSES[c.model]:
        raise bad("model_class", f"{MODEL_CLASSES[c.model]!r} (its config's model is {c.model!r})")
    if not _int(state["parameters"], 1, 2**53):
        raise bad("parameters", "a positive integer")
    world, context = state["processes"], state.get("context_parallel", 1)
    if not _int(context, 2, 2**31) and "context_parallel" in state:
        raise bad("context_parallel", "an integer ≥ 2 (processes per sequence)")
    if not _splits(c.batch_size, world, context):
        raise bad("processes", f"a number of processes, a multiple of {context} per sequence, whose "
                               f"data-parallel groups the batch of {c.batch_size} splits evenly over")
    B, T = c.batch_size, c.sequence_len()
    if not _int(state["tokens_seen"], step * B, step * B * T):
        raise bad("tokens_seen", f"between step·batch ({step * B}) and step·batch·sequence length "
                                 f"({step * B * T})")
    tokens = state["loss_tokens"]
    if not _int(tokens, 0, state["tokens_seen"]):
        raise bad("loss_tokens", "an integer between 0 and tokens_seen")
    most = tokens * float(torch.finfo(getattr(torch, c.dtype)).max) if tokens else 0.0
    if not _number(state["loss_sum"], 0.0, most):
        raise bad("loss_sum", f"a sum of {tokens} cross-entropies (0 … {most:.3g})")
    now = time.time()
    if not _number(state["elapsed_s"], 0.0, now):
        raise bad("elapsed_s", "seconds ≥ 0 and fewer than since 1970")
    data = state["data"]
    if not isinstance(data, dict) or set(data) != {"kind", "next_step"} or data["next_step"] != step + 1 \
            or not isinstance(data["kind"], str):
        raise bad("data", f"the batches' description, next_step {step + 1}")
    versions = state["versions"]
    if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) < 200
                                                 for k, v in versions.items()):
        raise bad("versions", "an object of version strings")
    last = state["last_record"]
    if last is not None and not _record_ok(last, c, step, state["tokens_seen"], now):
        raise bad("last_record", "null or an evaluation of this run (step, losses ≥ 0, accuracies in [0, 1], "
                                 "its learning rate)")


def _record_ok(r: object, c: TrainConfig, step: int, tokens_seen: int, now: float) -> bool:
    """``r`` is an evaluation this run wrote at a step ≤ ``step`` (its lr is the schedule's there)."""
    if not isinstance(r, dict) or not _finite(r) or not set(r) <= RECORD_KEYS:
        return False
    s = r.get("step")
    if not _int(s, 1, step) or r.get("model") != c.model or r.get("lr") != c.lr_at(s):
        return False
    if not all(_number(r.get(k), 0.0, math.inf) for k in ("loss", "eval_loss")):
        return False
    if "longer_loss" in r and not _number(r["longer_loss"], 0.0, math.inf):
        return False
    if not all(_number(r[k], 0.0, 1.0) for k in ("accuracy", "longer_accuracy", "char_accuracy") if k in r):
        return False
    context = r.get("context_parallel", 1)
    return (_int(r.get("tokens"), 0, tokens_seen) and _number(r.get("elapsed_s"), 0.0, now)
            and (_int(context, 2, 2**31) or "context_parallel" not in r)
            and _splits(c.batch_size, r.get("processes"), context))


def _splits(batch: int, world: object, context: int) -> bool:
    """``world`` processes in groups of ``context`` per sequence, the batch split evenly over the groups."""
    return (_int(world, context, batch * context) and world % context == 0  # type: ignore[operator]
            and batch % (world // context) == 0)  # type: ignore[operator]
