"""A sentence → the explorer's data, the way ``explain --html`` makes it: one trace of every layer
(``models.tracing.trace``, with explain's token limit), the layer, head and word ``explain``
would show (``explain.selection.select``), and ``viz.html.payload`` of ``Trace.attention_data()``.
The text's own limits (characters, control characters, UTF-8) are checked here, before the model.
"""

from __future__ import annotations

import json
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

from .._text import check_unicode, clip
from ..errors import InputError, ModelError
from ..viz.data import AttentionData

DEFAULT_TEXT = "I am enjoying this lecture"
ALLOWED_CONTROLS = "\t\n\r"  # whitespace to a tokenizer; any other control character is refused


def check_text(text: object, max_chars: int) -> str:
    """``text`` if it is a str of 1 … ``max_chars`` characters, valid UTF-8, without control
    characters other than tab and line breaks; else InputError naming what is wrong."""
    if not isinstance(text, str):
        raise InputError(f'"text" must be a string, got {_json_type(text)}')
    if len(text) > max_chars:
        raise InputError(f"the text has {len(text):,} characters, more than the {max_chars:,} this server "
                         "takes (--max-chars)")
    try:
        check_unicode(text, "the text")
    except ValueError as e:
        raise InputError(str(e)) from None
    for n, ch in enumerate(text, 1):
        if unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROLS:
            raise InputError(f"the text has a control character (U+{ord(ch):04X}) at character {n}; "
                             "send plain text")
    return text


def _json_type(x: object) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if x is None else names.get(type(x), type(x).__name__)


@dataclass(frozen=True)
class Answer:
    """One sentence: the traced ``attention`` (``AttentionData``), the explorer's ``data`` of it
    (``payload``, opening on ``opening``: layer, head, word, 1-based), its ``warning`` (the text was
    cut, in explain's words) and the JSON ``body`` sent for it."""

    attention: AttentionData
    opening: tuple[int, int, int]
    data: dict[str, Any]
    warning: str | None
    body: bytes


def explore(model: Any, text: str, *, causal: bool = False) -> Answer:
    """The explorer's data of ``model`` on ``text`` (already checked by ``check_text``), opening on
    the layer, head and word ``explain`` shows. Raises InputError for text the model refuses (no
    word pieces, more tokens than explain takes), ModelError when its numbers are not finite.
    Runs the model: call it from one thread at a time (the trace hooks the model's layers)."""
    from ..explain.selection import select
    from ..explain.walk import MAX_TOKENS
    from ..models.tracing import trace
    from ..viz.html import payload

    with warnings.catch_warnings(record=True) as caught:  # the text cut to the model's length
        warnings.simplefilter("always")
        t = trace(model, text, truncate=True, max_tokens=MAX_TOKENS, causal=causal)
    said = [str(w.message) for w in caught if w.category.__name__ == "TruncationWarning"]
    sel = select(t, layer=None, head=None, word=None)
    attention, opening = t.attention_data(), (sel.layer + 1, sel.head + 1, sel.word + 1)
    data = payload(attention, layer=opening[0], head=opening[1], word=opening[2])
    warning = said[0] if said else None
    try:
        body = json.dumps({**data, "warning": warning}, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise ModelError(f"the model's numbers for {clip(text)!r} are not finite (inf or NaN); its weights "
                         "cannot be run in float32") from None
    return Answer(attention, opening, data, warning, body.encode("utf-8"))
