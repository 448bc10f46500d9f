"""A text as word pieces, only as much of it as can be used: ``tokenize_prefix`` tokenizes growing
prefixes of a long text (memory stays bounded whatever its length) and ``cut_message`` is the one
message for a text cut to the model's length. Used by ``PretrainedModel`` and ``embed``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tokenizing costs ~150 bytes of memory per character; only what can be used is tokenized:
WHOLE_CHARS = 1 << 16  # texts up to this long are tokenized whole (exact counts of what is dropped)
MAX_CHARS = 1 << 20  # of a longer text, growing prefixes, never past this many characters


@dataclass
class Pieces:
    """One text's word pieces, [CLS] … [SEP], at most the limit asked for."""

    ids: list[int]
    tokens: list[str]
    dropped: int | None  # word pieces cut from the end; None: more than could be counted cheaply
    dropped_chars: int  # characters after the last word piece kept (0 when nothing was cut)
    empty: bool  # the text held no word piece at all

    @property
    def cut(self) -> bool:
        return self.dropped != 0


def _last_space(text: str, lo: int, hi: int) -> int:
    """The index after the last whitespace in text[lo:hi], or hi when there is none."""
    for i in range(hi - 1, lo - 1, -1):
        if text[i].isspace():
            return i + 1
    return hi


def tokenize_prefix(tokenizer, text: str, limit: int) -> Pieces:
    """The first ``limit`` word pieces of ``text`` (with [CLS] and [SEP]), tokenizing only what is needed.

    Texts up to ``WHOLE_CHARS`` are tokenized whole. Longer ones are tokenized in growing
    prefixes cut at whitespace, until the pieces of complete words exceed the limit (the last word
    of a prefix may go on past the cut, so its pieces are not trusted) or ``MAX_CHARS`` is
    reached, beyond which nothing is read. Memory stays bounded whatever the length of ``text``.
    """
    n = len(text)
    size = WHOLE_CHARS
    while True:
        end = min(n, size, MAX_CHARS)
        cut = end if end == n else _last_space(text, end // 2, end)
        enc = tokenizer.encode(text[:cut])
        words = enc.word_ids
        if cut == n or end == MAX_CHARS:  # the whole text, or all that will ever be read of it
            return _keep(enc, limit, cut, n - cut, exact=cut == n)
        last = max((w for w in words if w is not None), default=None)
        complete = sum(1 for w in words if w is not None and w != last)
        if complete > limit - 2:
            return _keep(enc, limit, cut, n - cut, exact=False)
        size *= 4


def _keep(enc, limit: int, length: int, unread: int, *, exact: bool) -> Pieces:
    """[CLS], the first ``limit - 2`` pieces of a tokenized prefix of ``length`` characters, [SEP].

    ``unread``: characters of the text after the prefix; ``exact``: the prefix is the whole text,
    so the count of dropped pieces is known.
    """
    content = len(enc.ids) - 2  # without [CLS] and [SEP]
    keep = min(content, limit - 2)
    ids = enc.ids[: 1 + keep] + enc.ids[-1:]
    tokens = enc.tokens[: 1 + keep] + enc.tokens[-1:]
    over = content - keep
    if over == 0 and unread == 0:
        return Pieces(ids, tokens, 0, 0, content == 0)
    end = enc.offsets[keep][1] if keep else 0  # where the last kept piece ends in the text
    return Pieces(ids, tokens, over if exact else None, length - end + unread, content == 0)


def cut_message(label: str, p: Pieces, limit: int, what: str, *, cut: bool = True) -> str:
    """The one message for a text longer than ``limit`` word pieces (``what`` names the limit):
    what was kept and dropped when ``cut``, else only that it is too long."""
    if p.dropped is not None:
        size = f"{label} has {len(p.ids) + p.dropped} word pieces, more than {what}"
        rest = f"dropped the last {p.dropped}"
    else:
        size = f"{label} has more word pieces than {what}"
        rest = f"dropped the rest ({p.dropped_chars:,} characters)"
    return f"{size}: kept the first {limit - 1} and [SEP], {rest}" if cut else size
