"""The questions of ``explain --quiz``, one kind each, on one small problem: the toy model (D = 4 by
default) on two or three words, computed with the lecture's loops (``reference.self_attention``).

``KINDS`` in the order the quiz asks them, the lecture's order:

- ``q``: one component of q_i = W_Q h_i (given h_i and that row of W_Q);
- ``e``: one score e_ij = q_i · k_j (given q_i and k_j);
- ``alpha``: that pair's weight α_ij (given the row of scores);
- ``z``: one component of z_i = Σ_j α_ij v_j (given the weights and that component of each v_j);
- ``shape_E`` and ``shape_Z``: the shapes of Qᵀ K and of Z in the lecture's orientation (words
  as columns), answered as "rows x columns";
- ``causal``: one weight of a row under the causal mask (given the whole row of scores: the
  learner drops the masked ones);
- ``heads``: the first component of o_i = W_O c_i, where c_i stacks the z_i of two heads of
  d = D/2 (rows 1…D/2 and D/2+1…D of the W's): the concatenation's order decides the answer.

i is the first word (or ``--word``), j the word i attends to most, the components the largest in
size, so that the answers follow one thread and none is near zero by accident. W_O, which the toy
model does not have, is drawn from its seed like its W's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import reference
from .._text import printable
from ..errors import UsageError
from ..models.toy import ToyModel

KINDS = ("q", "e", "alpha", "z", "shape_E", "shape_Z", "causal", "heads")
CLASSIC = ("e", "alpha", "z")  # the three of earlier versions: --answers e,α,z asks these alone
SHAPES = ("shape_E", "shape_Z")
DIGITS = 4  # decimals of the numbers given


@dataclass
class Question:
    kind: str  # one of KINDS
    ask: str  # the question, with the numbers it needs (without its number)
    exact: float | tuple[int, int]  # a number, or a shape (rows, columns)
    worked: str  # the worked step, shown when the answer is wrong

    @property
    def shape(self) -> bool:
        return self.kind in SHAPES


def _n(x: float) -> str:
    return f"{x:.{DIGITS}f}"


def _v(x: np.ndarray) -> str:
    return "[" + ", ".join(_n(float(c)) for c in x) + "]"


def _dot(a: np.ndarray, b: np.ndarray) -> str:
    return " + ".join(f"({_n(x)})({_n(y)})" for x, y in zip(a, b, strict=True))


def w_o(model: ToyModel) -> np.ndarray:
    """The quiz's W_O (D, D): N(0, 1/D) from the toy's seed, as its W's (a stream of its own)."""
    rng = np.random.default_rng([model.seed, 1])
    return rng.standard_normal((model.dim, model.dim)) / math.sqrt(model.dim)


@dataclass
class Problem:
    """The problem every question reads: the toy's H (D, T), W's (D, D), the loops' steps, the word i
    asked about and the word j it attends to most (0-based), the words as shown."""

    H: np.ndarray
    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    s: reference.SelfAttentionSteps
    i: int
    j: int
    w: list[str]
    model: ToyModel

    @property
    def T(self) -> int:
        return self.H.shape[1]

    @property
    def d(self) -> int:
        return self.W_Q.shape[0]


def make_questions(model: ToyModel, words: list[str], i: int,
                   kinds: tuple[str, ...] = KINDS) -> tuple[dict, list[Question]]:
    """(facts, the questions of ``kinds``, in that order) about word ``i`` (0-based) of ``words``
    through ``model``; UsageError for a multi-head question with D = 1."""
    if "heads" in kinds and model.dim < 2:
        raise UsageError("--quiz: its multi-head question splits D in two heads; give --dim 2 or more")
    H = model.inputs(words)  # (D, T)
    W_Q, W_K, W_V = model.weights()
    s = reference.self_attention(H, W_Q, W_K, W_V)
    p = Problem(H, W_Q, W_K, W_V, s, i, int(np.argmax(s.A[i])), [printable(x) for x in words], model)
    make = {"q": _q, "e": _e, "alpha": _alpha, "z": _z, "shape_E": _shape_E, "shape_Z": _shape_Z,
            "causal": _causal, "heads": _heads}
    questions = [make[k](p) for k in kinds]
    facts = {"words": words, "D": model.dim, "seed": model.seed, "positions": model.positions,
             "i": p.i + 1, "j": p.j + 1, "kinds": list(kinds), "answers": [q.exact for q in questions]}
    return facts, questions


def _q(p: Problem) -> Question:
    i, s = p.i, p.s
    c = int(np.argmax(np.abs(s.Q[:, i])))  # the largest component: not a near-zero one
    h, row = p.H[:, i], p.W_Q[c]
    ask = (f'Component {c + 1} of the query of "{p.w[i]}" (i = {i + 1}):  q_{i + 1}[{c + 1}] = '
           f"W_Q[{c + 1},:] · h_{i + 1} = ?  (q = W_Q h: row {c + 1} of W_Q times h)\n"
           f"     h_{i + 1} = {_v(h)}\n     row {c + 1} of W_Q = {_v(row)}")
    return Question("q", ask, float(s.Q[c, i]), f"q_{i + 1}[{c + 1}] = {_dot(row, h)} = {_n(s.Q[c, i])}")


def _e(p: Problem) -> Question:
    i, j, s = p.i, p.j, p.s
    q, k = s.Q[:, i], s.K[:, j]
    ask = (f'The score of "{p.w[j]}" (j = {j + 1}) for "{p.w[i]}" (i = {i + 1}):  e_{i + 1}{j + 1} = '
           f"q_{i + 1} · k_{j + 1} = ?\n     q_{i + 1} = {_v(q)}\n     k_{j + 1} = {_v(k)}")
    return Question("e", ask, float(s.E[i, j]), f"e_{i + 1}{j + 1} = {_dot(q, k)} = {_n(s.E[i, j])}")


def _softmax_worked(e_row: np.ndarray, i: int, j: int, root: float, seen: int | None = None) -> str:
    """'α_ij = exp(e_ij/√d) / Σ_j exp(e_ij/√d) = …' (``i``, ``j`` 0-based) over the first ``seen``
    scores of the row (all by default)."""
    exps = np.exp(e_row[:seen] / root)
    a, b = i + 1, j + 1
    return (f"α_{a}{b} = exp(e_{a}{b}/{root:g}) / Σ_j exp(e_{a}j/{root:g}) = {_n(exps[j])} / "
            f"({' + '.join(_n(x) for x in exps)}) = {_n(exps[j])} / {_n(exps.sum())} = "
            f"{_n(exps[j] / exps.sum())}")


def _alpha(p: Problem) -> Question:
    i, j, s = p.i, p.j, p.s
    ask = (f"Its weight:  α_{i + 1}{j + 1} = softmax over j of e_{i + 1}j / √d_k, with d_k = {p.d} = ?\n"
           f"     scores e_{i + 1}j, j = 1…{p.T}: {_v(s.E[i])}")
    return Question("alpha", ask, float(s.A[i, j]),
                    _softmax_worked(s.E[i], i, j, math.sqrt(p.d)))


def _z(p: Problem) -> Question:
    i, s, T = p.i, p.s, p.T
    c = int(np.argmax(np.abs(s.Z[:, i])))  # the largest component: not a near-zero one
    v_c = s.V[c]  # (T,): component c of every v_j
    ask = (f"Component {c + 1} of z_{i + 1} = Σ_j α_{i + 1}j v_j = ?\n"
           f"     weights α_{i + 1}j, j = 1…{T}: {_v(s.A[i])}\n"
           f"     component {c + 1} of v_j, j = 1…{T}: {_v(v_c)}")
    return Question("z", ask, float(s.Z[c, i]), f"z_{i + 1}[{c + 1}] = {_dot(s.A[i], v_c)} = {_n(s.Z[c, i])}")


def _shape_E(p: Problem) -> Question:
    D, T, d = p.H.shape[0], p.T, p.d
    ask = (f"The shape of Qᵀ K, rows x columns (H is {D} x {T}: the {T} words are its columns; W_Q and "
           f"W_K are {d} x {D}) = ?")
    return Question("shape_E", ask, (T, T),
                    f"Q = W_Q H is {d} x {T}, so Qᵀ K is ({T} x {d})({d} x {T}) = {T} x {T}: a score a pair")


def _shape_Z(p: Problem) -> Question:
    dv, T = p.W_V.shape[0], p.T
    ask = (f"The shape of Z, the lecture's way (words as columns: z_i is column i; W_V is {dv} x "
           f"{p.H.shape[0]}) = ?")
    return Question("shape_Z", ask, (dv, T),
                    f"Z = V Aᵀ is ({dv} x {T})({T} x {T}) = {dv} x {T}; the lecture's softmax(QᵀK/√d_k)·Vᵀ "
                    f"is its transpose, {T} x {dv} (PyTorch's rows)")


def _causal(p: Problem) -> Question:
    r, T, s = p.T - 2, p.T, p.s  # 0-based: the row before the last, which may not see the last word
    exps = np.exp(s.E[r, :r + 1] / math.sqrt(p.d))
    ask = (f"With the causal mask (word i sees words 1…i only, e_ij = −∞ for j > i): α_{r + 1}1, the weight "
           f"of word 1 for \"{p.w[r]}\" (i = {r + 1}) = ?\n"
           f"     scores e_{r + 1}j without the mask, j = 1…{T}: {_v(s.E[r])}")
    hidden = f"word {T} is" if r + 2 == T else f"words {r + 2}…{T} are"
    worked = (f"{hidden} masked (exp(−∞) = 0); "
              + _softmax_worked(s.E[r], r, 0, math.sqrt(p.d), r + 1))
    return Question("causal", ask, float(exps[0] / exps.sum()), worked)


def _heads(p: Problem) -> Question:
    i, D = p.i, p.H.shape[0]
    half = D - D // 2  # head 1's rows; head 2 gets the rest (D even: D/2 each)
    zs = [reference.self_attention(p.H, p.W_Q[rows], p.W_K[rows], p.W_V[rows]).Z[:, i]
          for rows in (slice(0, half), slice(half, D))]
    c = np.concatenate(zs)  # (D,): c_i = [z_i of head 1; z_i of head 2]
    row = w_o(p.model)[0]
    n = i + 1
    ask = (f"Two heads instead of one: head 1 has rows 1…{half} of W_Q, W_K, W_V, head 2 the other "
           f"{D - half} rows. For \"{p.w[i]}\" they give\n"
           f"     z_{n} of head 1 = {_v(zs[0])}\n     z_{n} of head 2 = {_v(zs[1])}\n"
           f"     c_{n} = [z_{n} of head 1; z_{n} of head 2] (stacked), and o_{n} = W_O c_{n}.\n"
           f"     Row 1 of W_O = {_v(row)}. o_{n}[1] = ?")
    worked = f"c_{n} = {_v(c)}; o_{n}[1] = {_dot(row, c)} = {_n(row @ c)}"
    return Question("heads", ask, float(row @ c), worked)
