"""The metadata check that comes first in every collective call: one small all_gather of what each
process was asked to do, so that a mismatch (shapes, dtypes, layout, mask, causal) or a refused
argument stops EVERY process with the same one line instead of leaving the others waiting.

Each process packs its call into a fixed-size int64 vector: which function, whether its own
arguments were refused (and the first 320 bytes of why), then one number per field (floats by
their bits, words by their index, masks by a CRC of their bytes). Fixed size, so the all_gather
itself can never mismatch.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .comm import Comm

OPS = ("ring_attention", "unshard_sequence", "a model on a shard")
SLOTS = 48  # fields per call, at most
MESSAGE_BYTES = 320  # of a refused argument's message (one line)
_WORDS = MESSAGE_BYTES // 8
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8,
          torch.int16, torch.int32, torch.int64, torch.complex64, torch.complex128)


@dataclass(frozen=True)
class Field:
    """One number of the call. ``per_rank`` fields may differ (a shard's length); ``show`` says
    a value in words for the message."""

    name: str
    value: int
    show: Callable[[int], str] = str
    per_rank: bool = False


def float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def show_float(bits: int) -> str:
    return f"{struct.unpack('<d', struct.pack('<q', bits))[0]:.17g}"


def word(value: str, words: Sequence[str]) -> int:
    return words.index(value)


def shows_word(words: Sequence[str]) -> Callable[[int], str]:
    return lambda i: repr(words[i]) if 0 <= i < len(words) else f"#{i}"


def show_bool(i: int) -> str:
    return str(bool(i))


def show_dtype(i: int) -> str:
    return str(DTYPES[i]).removeprefix("torch.") if 0 <= i < len(DTYPES) else "another dtype"


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES)


def digest(*tensors: torch.Tensor | None) -> int:
    """A CRC-32 of the tensors' values and shapes (None counts as absent): equal masks, equal numbers."""
    crc = 0
    for t in tensors:
        if t is None:
            crc = zlib.crc32(b"none", crc)
            continue
        crc = zlib.crc32(repr(tuple(t.shape)).encode(), crc)
        crc = zlib.crc32(t.detach().to("cpu").contiguous().numpy().tobytes(), crc)
    return crc


def _pack(op: str, fields: Sequence[Field], error: BaseException | None) -> torch.Tensor:
    if len(fields) > SLOTS:
        raise AssertionError(f"{op}: {len(fields)} fields, the vector has {SLOTS}")
    vec = np.zeros(3 + SLOTS + _WORDS, dtype=np.int64)
    vec[0], vec[1], vec[2] = OPS.index(op), error is not None, len(fields)
    vec[3 : 3 + len(fields)] = [f.value for f in fields]
    if error is not None:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raw = text.encode("utf-8")[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0")
        vec[3 + SLOTS :] = np.frombuffer(raw, dtype=np.int64)
    return torch.from_numpy(vec)


def _message(row: torch.Tensor) -> str:
    raw = row[3 + SLOTS :].numpy().tobytes().rstrip(b"\0")
    return raw.decode("utf-8", errors="ignore")


def gather(comm: Comm, op: str, fields: Sequence[Field], error: BaseException | None,
           device: torch.device) -> list[list[int]]:
    """Every process's field values, in rank order, once all agree; else the same error everywhere.

    ``error``: this process's own arguments were refused: it is raised here, after the others have
    heard of it (they raise a ValueError quoting it). A process's fields are compared only with
    fields of the same function; ``per_rank`` ones are returned for the caller to check.
    """
    vec = _pack(op, fields, error)
    # gloo gathers CPU tensors; NCCL only device tensors
    where = device if comm.backend == "nccl" else torch.device("cpu")
    doing = f"checking the arguments of {op} with the others"
    rows = [r.cpu() for r in comm.all_gather(vec.to(where), doing)]
    if error is not None:
        raise error
    for r, row in enumerate(rows):
        if row[1]:
            raise ValueError(f"{op}: rank {r} of {comm.world} refused its arguments: {_message(row)}")
    calls = [OPS[int(row[0])] if 0 <= int(row[0]) < len(OPS) else "?" for row in rows]
    if len(set(calls)) > 1:
        raise ValueError(f"{op}: the processes are not in the same call: "
                         + ", ".join(f"rank {r} is in {c}" for r, c in enumerate(calls)))
    values = [row[3 : 3 + len(fields)].tolist() for row in rows]
    for i, f in enumerate(fields):
        seen = [v[i] for v in values]
        if not f.per_rank and len(set(seen)) > 1:
            said = ", ".join(f"rank {r} has {f.show(x)}" for r, x in enumerate(seen[:8]))
            raise ValueError(f"{op}: the processes disagree on {f.name}: {said}"
                             f"{', …' if len(seen) > 8 else ''}; every process must pass the same {f.name}")
    return values
