"""``explain``'s walk-through as terminal text, from a report dict (``explain.walk.build_report``);
nothing here computes attention.

The lecture's steps come first, after a header of a few lines: 1. q_i = W_Q h_i (one component
worked), 2. the scores e_ij = q_i · k_j (q_i beside every k_j), 3. the weights, 4. z_i, 5. all words
at once (``explain.worked`` and ``explain.tables``); then, for a real model, where each head looks,
how h_i was made, and the verification. Where H and the W's come from (rows of in_proj, the head's
score, the tokenizer's markers) is shown with ``verbose`` (--verbose).

Every line fits ``width`` columns (100 by default): prose is wrapped, tables show the words that
fit and say how many are left out; ``wide=True`` prints everything, unwrapped and uncut.
"""

from __future__ import annotations

from .._text import printable
from ..viz.terminal import format_table, truncate
from .fmt import vec
from .layout import Layout
from .tables import heads_lines, heatmap_lines, note, same_rows_note, score_and_weight_tables, z_table
from .worked import derivation, shapes, step_one, step_two


def render(report: dict, *, color: bool = False, width: int = 100, wide: bool = False,
           vmax: float | None = None, verbose: bool = False) -> str:
    """The walk-through as terminal text (ANSI colour in the heatmap only when ``color``; ``vmax``: a
    fixed top of its scale, else the largest weight; ``verbose``: where every number comes from)."""
    r = report
    v = Layout(r, width, wide, verbose)
    e_table, a_table, (rows, cols) = score_and_weight_tables(r, v)
    out = _header(r, v) + _sentence(r, v) + (_provenance(r, v) if verbose else [])
    out += step_one(r, v) + note(r, v, rows, cols) + step_two(r, v) + e_table[:-1] + _alignment(v) + [""]
    out += ["3. " + a_table[0], *a_table[1:], *same_rows_note(r, v), ""]
    out += derivation(r, v) + shapes(r, v) + z_table(r, v, rows) + [""]
    out += heatmap_lines(r, v, color=color, vmax=vmax) + [""]
    if v.real:
        out += heads_lines(r, v) + [""]
    out += _input(r, v)
    out += _render_verification(r["verification"], v)
    return "\n".join(out)


def _header(r: dict, v: Layout) -> list[str]:
    """A few lines: which head of which model, and where the lecture's own setting is."""
    m, D, d_k = r["model"], r["D"], r["d_k"]
    if v.real:
        choice = ("chosen with --head" if m["head_choice"] == "--head" else
                  f"{m['head_choice']}; --head 1…{r['num_heads']} picks any")
        b = ", and biases b" if v.b[0] else ""
        out = v.para(f"Layer {r['layer']}, head {r['head']} of {m['name']}, one {v.one} at a time: the "
                     f"lecture's steps with a trained model's numbers ({r['num_layers']} layers × "
                     f"{r['num_heads']} heads, D = {D}, d = {d_k} per head{b}). The lecture's own setting "
                     "— random W's, D = 64, no biases — is --model toy; --verbose: where H and the W's "
                     "come from")
        out += v.para(f"head {r['head']}: {choice}")
    else:
        seed = f", seed {m['seed']}" if "seed" in m else ""
        out = v.para(f"One self-attention layer, word by word, in the lecture's own setting: D = {D}, one "
                     f"head, no biases{seed}: random, untrained W's (--seed draws others). The same steps "
                     "in a trained model: drop --model toy")
        out += [line for key in ("embedding", "weights") if key in m for line in v.para(m[key], "  ", "    ")]
    return out + _mask_header(r, v)


def _mask_header(r: dict, v: Layout) -> list[str]:
    mask = r.get("mask")
    if mask is None:
        return []
    if mask["kind"] != "causal":
        return v.para(f"mask: {mask['masked']} of the T² scores are forbidden (−∞ before the softmax, "
                      "so α = 0 there)")
    if not mask["illustration"]:
        why = "as this model computes it"
    elif v.real:
        why = f"for illustration: {r['model']['name']} was trained without it"
    else:
        why = "added with --causal"
    return v.para(f"mask: causal, a decoder's ({why}): {v.one} i sees {v.unit} 1…i only, e_ij = −∞ for "
                  "j > i, α_ij = 0 there; each row still sums to 1")


def _sentence(r: dict, v: Layout) -> list[str]:
    sentence = printable(" ".join(r["text"].split()))
    out = [f'sentence: "{truncate(sentence, max(min(v.width, 400) - 40, 40))}"  (T = {r["T"]} {v.unit})']
    out += _wrap([f"{n}:{t}" for n, t in enumerate(v.tokens, 1)], max(min(v.width, 400), 60),
                 max_lines=4 if not v.wide else 10**6)
    if v.answer is not None:
        a = v.answer
        out += v.para(f'{a["task"]}: the prompt "{printable(a["prompt"])}", then the answer '
                      f'"{printable(a["answer"])}"; each row predicts the next {v.one}, so row {a["row"]} '
                      "writes the answer's first", "  ")
    elif v.unit == "characters":
        out += ["  (characters: one character is one token, as the model was trained)"]
    if r.get("dropped"):
        out += [f"  (truncated: the last {r['dropped']} {v.unit} did not fit the model)"]
    return [*out, ""]


def _provenance(r: dict, v: Layout) -> list[str]:
    """--verbose: where H and the W's come from, why this head, the tokenizer's markers, alignment."""
    out = ["Where the numbers come from (--verbose)"]
    if v.real:
        from ..models.heads import HEURISTIC

        m = r["model"]
        out += v.para(m["embedding"], "  ", "    ") + v.para(m["weights"], "  ", "    ")
        if m["head_choice"] not in ("--head", "the layer's only head") and "fewer" not in m["head_choice"]:
            out += v.para(f"head {r['head']}: the highest score of the layer ("
                          + HEURISTIC.format(one=v.one, unit=v.unit) + ")", "  ", "    ")
        if v.b[0]:
            out += v.para("b_Q, b_K, b_V: the biases of those rows (the lecture has none)", "  ", "    ")
    else:
        out += v.para("H = the word vectors (plus positions, if any) as columns; W_Q, W_K, W_V drawn at "
                      "random from --seed, never trained: the steps are the lecture's, the numbers mean "
                      "nothing yet", "  ", "    ")
    if v.unit == "word pieces":
        out += v.para("[CLS], [SEP]: markers the tokenizer adds; word pieces: the tokenizer's units, a rare "
                      "word split in parts: tokenizer → token ##izer", "  ", "    ")
    return [*out, ""]


def _alignment(v: Layout) -> list[str]:
    """Under a causal mask: which query lines up with which key when their lengths differ."""
    if not v.causal:
        return []
    return v.para("(causal alignment, when query and key lengths differ: top-left, as PyTorch, lines up the "
                  "first query with the first key; bottom-right, as FlashAttention and KV-cache decoding, "
                  "the last with the last. Here both lengths are T, so the two agree.)", "  ", "   ")


def _wrap(items: list[str], width: int, *, max_lines: int) -> list[str]:
    """items joined by two spaces, indented 2, in lines of at most ``width``; '…' if cut."""
    lines, cur = [], []
    for k, item in enumerate(items):
        if cur and len("  ".join([*cur, item])) > width - 2:
            if len(lines) + 1 == max_lines:  # the last line: room for the note of what is left out
                while len(cur) > 1 and len("  ".join(cur)) + len(f"  … ({len(items) - k + 1} more)") \
                        > width - 2:
                    cur.pop()
                    k -= 1
                return [*lines, f"  {'  '.join(cur)}  … ({len(items) - k} more)"]
            lines.append("  " + "  ".join(cur))
            cur = []
        cur.append(item)
    return [*lines, "  " + "  ".join(cur)]


def _input(r: dict, v: Layout) -> list[str]:
    """How h_i, the layer's input for the derived word, is made (layer 1 only): where positions enter."""
    parts = r.get("input")
    if not parts:
        return []
    i, w = r["derivation"]["index"], printable(r["derivation"]["word"])
    out = [f'How h_{i} ("{w}"), the layer\'s input, is made'] + v.para(parts["formula"], "  ")
    rows = [[printable(name), vec(x)] for name, x in parts["parts"]]
    if parts.get("norm"):
        rows.append([f"{parts['norm'].split(' (')[0]} → h_{i}", vec(parts["h"])])
    elif rows and len(rows) > 1:
        rows.append([f"= h_{i}", vec(parts["h"])])
    out.append(format_table(["", ""], [[truncate(a, 60), b] for a, b in rows], left=1,
                            indent="  ").split("\n", 1)[1])
    if parts["positions"] == "none":
        out += v.para(f"(no positions: h_{i} is the same wherever \"{w}\" stands, so the layer cannot tell "
                      "word order; see --permute, and --positions sinusoidal for the toy model)", "  ")
    else:
        kinds = {"learned": "learned, one vector per position, trained with the model",
                 "sinusoidal": "the original Transformer's sinusoids"}
        kind = kinds.get(parts["positions"], parts["positions"])
        out += v.para(f"(positions: {kind}; the only place word order enters: --permute shows what they "
                      "change)", "  ")
    return [*out, ""]


def _render_verification(ver: dict, v: Layout) -> list[str]:
    d = ver["max_abs_diff"]
    mark = f"all < {ver['tolerance']:.0e} ✓" if ver["ok"] else f"NOT all < {ver['tolerance']:.0e} ✗"
    skip = ("matrix_form", "auto", "weights")
    rest = "; ".join(f"{b} {d[b]:.1e}" for b in d if b not in skip)
    if not v.real:
        text = (f"verify (max |Δ| vs the per-word loop): matrix form {d['matrix_form']:.1e}; "
                f"attention(backend=\"auto\" → {ver['auto_backend']}) {d['auto']:.1e}; {rest} — {mark}")
    else:
        text = (f"verify (max |Δ| of the loops' Z, float64, vs the layer's own output for this head, "
                f"float32): backend \"auto\" → {ver['auto_backend']} {d['auto']:.1e}; {rest}; "
                f"weights α {d['weights']:.1e}; (matrix form {d['matrix_form']:.1e}) — {mark}")
    return v.para(text, "", "  ")
