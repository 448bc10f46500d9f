"""``selfattention embed`` and ``similarity``: sentence embeddings from a pretrained encoder.

An embedding is what sentence-transformers computes for all-MiniLM-L6-v2: the mean of the last
layer's hidden states over a sentence's word pieces, L2-normalized, (D,) float32 — so the cosine
similarity of two sentences is the dot product of their embeddings.

Sentences are checked before anything is computed (empty lines, text with no word pieces, text
too long for the model), and every message names the sentence: "sentence 2" for a command-line
argument, "line 7 of notes.txt" for ``--file``. ``save_npy`` writes all rows or nothing.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._io import check_path, write_atomic
from .errors import InputError

if TYPE_CHECKING:
    from .models.pretrained import PretrainedModel

PROGRESS_MIN = 257  # a progress bar from this many sentences on (on a terminal)
PREVIEW = 6  # components shown per sentence in text output (--json and --out have them all)
MAX_WARNINGS = 5  # truncation warnings said one by one; the rest are summed up in one line


def read_sentences(sentences: list[str], file: str | None) -> tuple[list[str], list[str]]:
    """The texts to embed and their labels, from the arguments or from ``file`` ("-" = stdin).

    A file holds one sentence per line (UTF-8, an optional BOM); trailing blank lines are
    ignored, a blank line between sentences is an error (it would shift every row after it).
    """
    if file is not None and sentences:
        raise InputError("give sentences as arguments or --file, not both")
    if file is None:
        if not sentences:
            raise InputError('nothing to embed: give sentences, e.g. "I am enjoying this lecture", '
                             "or --file PATH (one per line, - for stdin)")
        return list(sentences), [f"sentence {n}" for n in range(1, len(sentences) + 1)]
    name = "stdin" if file == "-" else file
    try:
        raw = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"--file {name} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read --file {name}: {e.strerror or e}") from None
    lines = [ln.removesuffix("\r") for ln in raw.removeprefix("\ufeff").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"--file {name} holds no sentences (one per line expected)")
    return lines, [f"line {n} of {name}" for n in range(1, len(lines) + 1)]


def check_texts(model: PretrainedModel, texts: list[str], labels: list[str], *,
                truncate: bool = True) -> list[int]:
    """Word pieces each text loses to truncation; raises InputError for a text that cannot be
    embedded (empty, no word pieces, too long when ``truncate`` is False). Warns per cut text."""
    for text, label in zip(texts, labels, strict=True):
        if not text.strip():
            raise InputError(f"{label} is empty")
    limit = model.embedding_max_length
    dropped = []
    for start in range(0, len(texts), 4096):  # the tokenizer is fast; chunks bound the memory
        for k, enc in enumerate(model.tokenizer.encode_batch(texts[start:start + 4096])):
            label, n = labels[start + k], len(enc.ids)
            if n <= 2:  # only [CLS] and [SEP]
                raise InputError(f"{label} has no word pieces the tokenizer keeps: "
                                 f"{texts[start + k][:40]!r}")
            if n > limit and not truncate:
                raise InputError(f"{label} has {n} word pieces, more than the {limit} this model "
                                 "embeds; shorten it, or drop --no-truncate to cut it")
            dropped.append(max(0, n - limit))
    cut = [(label, d) for label, d in zip(labels, dropped, strict=True) if d]
    for label, d in cut[:MAX_WARNINGS]:
        warnings.warn(f"{label} has {d + limit} word pieces, more than the {limit} this model embeds: "
                      f"dropped the last {d}", stacklevel=2)
    if len(cut) > MAX_WARNINGS:
        more = cut[MAX_WARNINGS:]
        warnings.warn(f"{len(more)} more sentences were truncated too, dropping "
                      f"{sum(d for _, d in more)} word pieces in all", stacklevel=2)
    return dropped


def embed_texts(model: PretrainedModel, texts: list[str], labels: list[str], *, batch_size: int = 32,
                truncate: bool = True, progress: bool | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of norm 1. ``progress`` None: a bar on a terminal from
    ``PROGRESS_MIN`` sentences on. Raises InputError (see ``check_texts``)."""
    from .models.pretrained import TruncationWarning

    check_texts(model, texts, labels, truncate=truncate)
    if progress is None:
        progress = len(texts) >= PROGRESS_MIN and sys.stderr.isatty()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # said above, naming the sentence
        X = model.embed(texts, batch_size=batch_size, truncate=True, progress=progress)
    if X.shape[0] != len(texts) or not np.isfinite(X).all():
        raise RuntimeError(f"the encoder gave {X.shape} embeddings with non-finite values or a "
                           f"wrong count for {len(texts)} sentences")
    return X


def check_out(path: str) -> Path:
    """``path`` if an .npy file can be written there; checked before computing anything."""
    try:
        return check_path(path, example="embeddings.npy")
    except OSError as err:
        raise InputError(f"--out: {err}") from None


def save_npy(path: str | Path, X: np.ndarray) -> None:
    """Write X with ``numpy.save`` (no pickle), all rows or nothing (see ``_io.write_atomic``)."""
    write_atomic(path, lambda f: np.save(f, X, allow_pickle=False))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two (D,) vectors, in float64, clipped to [-1, 1]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    return min(max(c, -1.0), 1.0)


def render_rows(name: str, texts: list[str], X: np.ndarray, *, width: int = 100) -> str:
    """One line per sentence: its number, first ``PREVIEW`` components, and the sentence."""
    N, D = X.shape
    lines = [f"{name}: {N} sentence embedding{'s' if N != 1 else ''}, D = {D} each "
             "(mean of the last layer over the word pieces, L2 norm 1)"]
    num = len(str(N))
    for n, (text, x) in enumerate(zip(texts, X, strict=True), 1):
        vec = "[" + ", ".join(f"{v: .4f}" for v in x[:PREVIEW]) + (", …]" if D > PREVIEW else "]")
        head = f"{n:>{num}}  {vec}  "
        room = max(width - len(head), 20)
        shown = " ".join(text.split())
        lines.append(head + (shown if len(shown) <= room else shown[: room - 1] + "…"))
    return "\n".join(lines)
