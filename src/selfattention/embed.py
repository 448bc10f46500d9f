"""``selfattention embed`` and ``similarity``: sentence embeddings from a pretrained encoder.

An embedding is what sentence-transformers computes for all-MiniLM-L6-v2: the mean of the last
layer's hidden states over a sentence's word pieces, L2-normalized, (D,) float32 — so the cosine
similarity of two sentences is the dot product of their embeddings.

Sentences are checked before anything is computed (empty lines, text with no word pieces, text
too long for the model), and every message names the sentence: "sentence 2" for a command-line
argument, "line 7 of notes.txt" for ``--file``. Memory stays bounded whatever the input: a file
(or stdin) is read twice, as a stream — once to check every line, once to embed ``WINDOW`` lines
at a time — of each line only its first ``MAX_CHARS`` characters are kept, and of those only what
the model can use is tokenized; results are written as they come (``--out`` all rows or nothing).
"""

from __future__ import annotations

import codecs
import io
import json
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

import numpy as np

from ._io import Target, check_path, write_atomic
from ._text import check_unicode, printable
from .errors import InputError

if TYPE_CHECKING:
    from .models.pretrained import PretrainedModel

PROGRESS_MIN = 257  # a progress bar from this many sentences on (on a terminal)
PREVIEW = 6  # components shown per sentence in text output (--json and --out have them all)
MAX_WARNINGS = 5  # truncation warnings said one by one; the rest are summed up in one line
CHUNK = 1 << 20  # bytes read at a time


def _max_chars() -> int:
    from .models.pretrained import MAX_CHARS

    return MAX_CHARS


@dataclass
class Sentence:
    label: str  # "sentence 2", "line 7 of notes.txt"
    text: str  # at most MAX_CHARS characters of it
    unread: int  # characters of the line after those


class Source:
    """The sentences to embed — command-line arguments, a file, or stdin ("-") — as a stream that
    can be read twice. Stdin is copied to a temporary file on the first read (capped lines only)."""

    def __init__(self, sentences: list[str], file: str | None):
        if file is not None and sentences:
            raise InputError("give sentences as arguments or --file, not both")
        if file == "":
            raise InputError("--file needs a path (or - for stdin), got an empty one")
        if file is None and not sentences:
            raise InputError('nothing to embed: give sentences, e.g. "I am enjoying this lecture", '
                             "or --file PATH (one per line, - for stdin)")
        self.sentences, self.file = sentences, file
        self.name = "stdin" if file == "-" else file
        # stdin, a FIFO, /dev/stdin…: what can be read only once is kept aside on the first read
        self.once = file == "-" or (file is not None and _read_once(file))
        self.count: int | None = None  # sentences, once read through
        self._spool: tempfile.SpooledTemporaryFile | None = None

    def __iter__(self) -> Iterator[Sentence]:
        if self.file is None:
            for n, text in enumerate(self.sentences, 1):
                if isinstance(text, str):
                    check_unicode(text, f"sentence {n}")
                yield Sentence(f"sentence {n}", text, 0)
            return
        if self.count is None:
            yield from self._first_read()
            return
        stream = self._spool if self._spool is not None else self._open()
        if self._spool is not None:
            stream.seek(0)
        try:
            for n, (text, unread) in enumerate(_lines(stream, self.name), 1):
                if n > self.count:
                    break
                yield Sentence(f"line {n} of {self.name}", text, unread)
        finally:
            if self._spool is None:
                stream.close()

    def _open(self) -> BinaryIO:
        path = Path(self.file)  # type: ignore[arg-type]
        if path.is_dir():
            raise InputError(f"cannot read --file {self.name}: it is a directory")
        try:
            return open(path, "rb")
        except OSError as e:
            raise InputError(f"cannot read --file {self.name}: {e.strerror or e}") from None

    def _first_read(self) -> Iterator[Sentence]:
        """Every line, checking that blank lines come only at the end (they would shift the rows
        after them); counts the sentences; copies stdin aside for the second read."""
        stream = _stdin() if self.file == "-" else self._open()
        if self.once:
            self._spool = tempfile.SpooledTemporaryFile(max_size=1 << 24, mode="w+b")
        blank, count = None, 0
        try:
            for n, (text, unread) in enumerate(_lines(stream, self.name), 1):
                if self._spool is not None:
                    try:
                        self._spool.write(text.encode("utf-8") + b"\n")
                    except OSError as e:  # past 16 MB it goes to a temporary file
                        raise InputError(f"cannot keep {self.name} aside for a second read (a "
                                         f"temporary file: {e.strerror or e})") from None
                if not text.strip() and not unread:
                    blank = blank or n
                    continue
                if blank is not None:
                    raise InputError(f"line {blank} of {self.name} is empty (a blank line between "
                                     "sentences would shift every row after it)")
                count = n
                yield Sentence(f"line {n} of {self.name}", text, unread)
        finally:
            if self.file != "-":
                stream.close()
        if count == 0:
            raise InputError(f"--file {self.name} holds no sentences (one per line expected)")
        self.count = count

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


def _read_once(file: str) -> bool:
    """Whether ``file`` is something other than a regular file (a FIFO, a character device)."""
    try:
        return not stat.S_ISREG(os.stat(file).st_mode)
    except OSError:
        return False  # said when it is opened


def _stdin() -> BinaryIO | TextIO:
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False):
        raise InputError("cannot read --file -: stdin is closed")
    return getattr(stream, "buffer", stream)  # bytes where there are bytes: decoded strictly here


def _lines(stream: BinaryIO | TextIO, name: str) -> Iterator[tuple[str, int]]:
    """(the first MAX_CHARS characters of each line, how many characters followed), streaming.

    UTF-8 is decoded strictly (an optional BOM is dropped, "\\r\\n" counts as "\\n"); a NUL
    character marks a binary file. InputError names the byte offset of what is wrong.
    """
    cap = _max_chars()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes (or characters, for a text stream) consumed before this chunk
    line: list[str] = []
    kept = unread = 0
    first = True
    while True:
        try:
            chunk = stream.read(CHUNK)
        except UnicodeDecodeError as e:  # a text stream decoding for us
            where = offset + e.start
            raise InputError(f"--file {name} is not UTF-8 text (bad byte at offset {where})") from None
        except OSError as e:
            raise InputError(f"cannot read --file {name}: {e.strerror or e}") from None
        if isinstance(chunk, bytes):
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                pending = len(decoder.getstate()[0])
                raise InputError(f"--file {name} is not UTF-8 text (bad byte at offset "
                                 f"{offset - pending + e.start})") from None
        else:
            text = chunk
        if first:
            text, first = text.removeprefix("\ufeff"), False
        if "\0" in text:
            raise InputError(f"--file {name} is not a text file (a NUL byte near offset "
                             f"{offset + text.index(chr(0))})")
        offset += len(chunk)
        parts = text.split("\n")
        for k, part in enumerate(parts):
            if kept < cap:
                take = part[: cap - kept]
                line.append(take)
                kept += len(take)
                unread += len(part) - len(take)
            else:
                unread += len(part)
            if k < len(parts) - 1:  # a line ends here
                yield _finish(line, unread, name)
                line, kept, unread = [], 0, 0
        if not chunk:
            if kept or unread:
                yield _finish(line, unread, name)
            return


def _finish(parts: list[str], unread: int, name: str) -> tuple[str, int]:
    text = "".join(parts)
    if not unread:
        text = text.removesuffix("\r")
    check_unicode(text, f"a line of {name}")
    return text, unread


def check_sentence(model: PretrainedModel, s: Sentence, *, truncate: bool):
    """The word pieces ``s`` gives (``PretrainedModel.pieces``), as an InputError when it cannot be
    embedded. A text cut at ``MAX_CHARS`` while reading counts as truncated (never silently)."""
    from .models.pretrained import Pieces, cut_message

    if not isinstance(s.text, str):
        raise InputError(f"{s.label} is a {type(s.text).__name__}, expected str")
    if not s.text.strip() and not s.unread:
        raise InputError(f"{s.label} is empty")
    limit = model.embedding_max_length
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once per sentence by check_all
            p = model.pieces(s.text, s.label, limit=limit, truncate=truncate)
    except ValueError as e:
        raise InputError(str(e)) from None
    if s.unread:
        p = Pieces(p.ids, p.tokens, None, p.dropped_chars + s.unread, p.empty)
        if not truncate:
            raise InputError(cut_message(s.label, p, limit, model.limit_phrase(limit), cut=False))
    return p


def check_all(model: PretrainedModel, source: Source, *, truncate: bool = True) -> int:
    """Read every sentence once: raise InputError for the first one that cannot be embedded, warn
    for those that are cut (``MAX_WARNINGS`` by name, the rest summed up). Returns the count."""
    from .models.pretrained import cut_message

    limit, n, cut = model.embedding_max_length, 0, []
    for s in source:
        p = check_sentence(model, s, truncate=truncate)
        n += 1
        if p.cut:
            if len(cut) < MAX_WARNINGS:
                warnings.warn(cut_message(s.label, p, limit, model.limit_phrase(limit)), stacklevel=2)
            cut.append(p.dropped)
    if len(cut) > MAX_WARNINGS:
        more = cut[MAX_WARNINGS:]
        counted = sum(d for d in more if d is not None)
        pieces = f", dropping {counted} word pieces in all" if None not in more else ""
        warnings.warn(f"{len(more)} more sentences were truncated too{pieces}", stacklevel=2)
    return n


def embed_stream(model: PretrainedModel, source: Source, *, batch_size: int = 32, truncate: bool = True,
                 on_batch: Callable[[int], object] | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """(texts, their (n, D) float32 embeddings), ``WINDOW`` sentences at a time, in order. Run
    ``check_all`` first: this second read says nothing about truncation."""
    from .models.pretrained import WINDOW

    window: list[Sentence] = []

    def flush() -> tuple[list[str], np.ndarray]:
        found = [check_sentence(model, s, truncate=truncate) for s in window]
        X = model.embed_pieces(found, batch_size=batch_size, on_batch=on_batch)
        return [s.text for s in window], X

    for s in source:
        window.append(s)
        if len(window) == WINDOW:
            yield flush()
            window = []
    if window:
        yield flush()


def embed_texts(model: PretrainedModel, texts: list[str], labels: list[str], *, batch_size: int = 32,
                truncate: bool = True) -> np.ndarray:
    """(N, D) float32 embeddings of a few texts named by ``labels`` (InputError names the label)."""
    found = [check_sentence(model, Sentence(label, text, 0), truncate=truncate)
             for text, label in zip(texts, labels, strict=True)]
    for p, label in zip(found, labels, strict=True):
        if p.cut:
            from .models.pretrained import cut_message

            limit = model.embedding_max_length
            warnings.warn(cut_message(label, p, limit, model.limit_phrase(limit)), stacklevel=2)
    return model.embed_pieces(found, batch_size=batch_size)


def check_out(path: str) -> Target:
    """Where --out will write an .npy file; checked before computing anything."""
    try:
        return check_path(path, example="embeddings.npy")
    except OSError as err:
        raise InputError(f"--out: {err}") from None


def save_npy(path: str | Path | Target, X: np.ndarray) -> None:
    """Write X with ``numpy.save`` (no pickle), all rows or nothing (see ``_io.write_atomic``)."""
    write_atomic(path, lambda f: np.save(f, X, allow_pickle=False))


def save_npy_stream(target: Target, rows: Iterator[np.ndarray], shape: tuple[int, int]) -> None:
    """Write (N, D) float32 rows as they come as one .npy file, all rows or nothing; InputError
    when it cannot be written (the old file, if any, is kept)."""
    from numpy.lib import format as npy

    def write(f: BinaryIO) -> None:
        npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        n = 0
        for X in rows:
            f.write(np.ascontiguousarray(X, dtype="<f4").tobytes())
            n += X.shape[0]
        assert n == shape[0], (n, shape)

    try:
        write_atomic(target, write)
    except BrokenPipeError:  # written through to a pipe whose reader went away: a quiet end
        raise
    except OSError as err:
        raise InputError(f"--out {target.path}: cannot write it ({err.strerror or err})") from None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two (D,) vectors, in float64, clipped to [-1, 1]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    return min(max(c, -1.0), 1.0)


def render_header(name: str, N: int, D: int) -> str:
    return (f"{name}: {N} sentence embedding{'s' if N != 1 else ''}, D = {D} each "
            "(mean of the last layer over the word pieces, L2 norm 1)")


def render_row(n: int, N: int, text: str, x: np.ndarray, *, width: int = 100) -> str:
    """One line: the sentence's number, its first ``PREVIEW`` components, the sentence (escaped)."""
    D = x.shape[0]
    vec = "[" + ", ".join(f"{v: .4f}" for v in x[:PREVIEW]) + (", …]" if D > PREVIEW else "]")
    head = f"{n:>{len(str(N))}}  {vec}  "
    room = max(width - len(head), 20)
    shown = printable(" ".join(text.split()))
    return head + (shown if len(shown) <= room else shown[: room - 1] + "…")


def render_rows(name: str, texts: list[str], X: np.ndarray, *, width: int = 100) -> str:
    """The header and one line per sentence."""
    N, D = X.shape
    rows = [render_row(n, N, t, x, width=width) for n, (t, x) in enumerate(zip(texts, X, strict=True), 1)]
    return "\n".join([render_header(name, N, D), *rows])


def json_stream(out: io.TextIOBase, name: str, N: int, D: int,
                chunks: Iterator[tuple[list[str], np.ndarray]]) -> Iterator[np.ndarray]:
    """Print the --json document as the embeddings come, yielding each chunk's rows once printed
    (valid JSON: the model's output was checked to be finite)."""
    out.write(json.dumps({"model": name, "dim": D, "count": N})[:-1] + ', "embeddings": [')
    first = True
    for texts, X in chunks:
        for t, x in zip(texts, X, strict=True):
            row = json.dumps({"text": t, "vector": x.tolist()}, allow_nan=False)
            out.write(("" if first else ", ") + row)
            first = False
        yield X
    out.write("]}\n")
