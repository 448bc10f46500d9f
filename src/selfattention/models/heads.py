"""Which head to show, and where each head looks: the default head choice, in one place.

Default head of a layer with several: the one that mixes the most real words for this sentence
(``choose_head``), so that z is a real weighted mix of several words rather than a copy of one or a
glance at a marker such as [CLS]; in all-MiniLM-L6-v2's layer 1 that is head 4 for typical
multi-word sentences. With fewer than two real words nothing is mixed, and head 1 is taken.
"""

from __future__ import annotations

import numpy as np

MIXING = "the one of this layer mixing the most real {unit} (default)"
TOO_FEW = "the default when there are fewer than two real {unit} to mix"
# The rule of ``choose_head`` in one line, for a reader (markers: [CLS], [SEP]).
HEURISTIC = ("score: the mean over real {unit} of the weight each puts on real {unit} × how many of them "
             "share that weight, e^entropy")


def default_head(weights: np.ndarray, special: list[bool], unit: str) -> tuple[int, str]:
    """(0-based head, why) for one layer's ``weights`` (H, T, T) over tokens whose ``special`` flags
    mark [CLS]/[SEP] (``unit`` names a token in the why): the rule above, or head 1 for a one-head
    layer. (It takes a trace's parts, not the Trace, so that tracing may ask it.)"""
    if weights.shape[0] == 1:
        return 0, "the layer's only head"
    real = np.array([not s for s in special])
    if real.sum() < 2:
        return 0, TOO_FEW.format(unit=unit)
    return choose_head(weights, real), MIXING.format(unit=unit)


def choose_head(weights: np.ndarray, real: np.ndarray | None = None) -> int:
    """0-based index of the head that mixes the most real words (ties: the lowest).

    weights (num_heads, T, T); ``real`` (T,) bool marks the real words (default: all but the first
    and last, [CLS] and [SEP]). For each real word i (asking), take its weights on the real words
    j (keys; markers left out): their mass m_i and their effective number n_i = exp(entropy of
    them, renormalized). The score is the mean of m_i · n_i — high when most weight goes to several
    real words at once, low for a head that parks its weight on a marker or copies one word.
    """
    T = weights.shape[1]
    if real is None:
        real = np.arange(T) % max(T - 1, 1) != 0  # all but the first and last
    if real.sum() < 2:  # fewer than two real words: no mixing
        return 0
    rows = weights[:, real][:, :, real]  # (H, T', T'), the real words
    mass = rows.sum(-1)  # (H, T')
    p = rows / np.clip(mass[..., None], 1e-30, None)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)  # (H, T')
    return int(np.argmax((mass * np.exp(entropy)).mean(-1)))


# The rule of ``overview``'s kinds in one line, for a reader ({first}, {last}: [CLS], [SEP] or
# "first", "last"; {mirror}: MIRROR for a task model's answer, else "").
PRIORITY = ("each α_ij counts once, in the first kind that fits: self (j = i), {first} (j = 1), {last} "
            "(j = T), previous (j = i − 1), next (j = i + 1){mirror}, offset (j = i + o, the one "
            "constant o, |o| ≥ 2, that holds the most of the head's weight left), other")
MIRROR = (", mirror (the row writing answer character k looks at prompt character n + 1 − k, "
          "n = the prompt's length: a reversal)")


def overview(weights: np.ndarray, tokens: list[str], special: list[bool] | None = None, *,
             rows: list[int] | None = None, answer: int | None = None) -> list[dict[str, object]]:
    """Where each head looks: per head, mean α by kind of key, and each word's most-attended word.

    weights (num_heads, T, T). Each α_ij is counted once, in the first kind that fits (``PRIORITY``):
    "self" (j = i), "[CLS]" (j = first), "[SEP]" (j = last) — "first" and "last" when the text has
    no markers —, "previous" (j = i − 1), "next" (j = i + 1), with an ``answer`` (0-based row that
    writes a task's first answer character, s) "mirror" (j = 2s − 1 − i, for rows i ≥ s), then
    "offset" (j = i + o for the head's one constant o that holds the most of the weight left, named
    in "offset"), "other". The means are over the asking rows ``rows`` (0-based; default all T), so
    each head's kinds sum to 1.
    """
    Hn, T, _ = weights.shape
    asking = np.arange(T) if rows is None or not len(rows) else np.asarray(rows, dtype=int)
    i, j = np.indices((T, T))
    marked = special is None or (special[0] and special[-1])  # BERT's [CLS] first and [SEP] last
    names = ["self", tokens[0] if marked else "first", tokens[-1] if marked else "last", "previous", "next"]
    rules = [j == i, j == 0, j == T - 1, j == i - 1, j == i + 1]
    if answer is not None:
        names.append("mirror")
        rules.append((i >= answer) & (j == 2 * answer - 1 - i))
    names += ["offset", "other"]
    fixed = np.select(rules, list(range(len(rules))), default=-1)[asking]  # (R, T); -1: none of them
    diagonal = (j - i)[asking]  # (R, T): o = j − i
    out = []
    for h in range(Hn):
        w = weights[h][asking]  # (R, T)
        left = fixed == -1
        offsets = np.unique(diagonal[left])
        mass = [float(w[left & (diagonal == o)].sum()) for o in offsets]
        o = int(offsets[int(np.argmax(mass))]) if len(offsets) else None
        kind = np.where(left, len(names) - 1, fixed)
        if o is not None:
            kind = np.where(left & (diagonal == o), len(names) - 2, kind)
        share = [float(w[kind == k].sum() / len(asking)) for k in range(len(names))]
        top = weights[h].argmax(-1)  # (T,)
        out.append({
            "head": h + 1,
            "share": dict(zip(names, share, strict=True)),
            "mostly": names[int(np.argmax(share))],
            "offset": o,  # the constant o of "offset": j = i + o
            "argmax": [int(t) + 1 for t in top],  # 1-based position each word attends to most
            "argmax_words": [tokens[t] for t in top],
            "argmax_alpha": [float(weights[h, r, t]) for r, t in enumerate(top)],
        })
    return out
