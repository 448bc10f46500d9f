"""The explorer's pair view: for the selected (i, j), q_i and k_j with their element-wise products,
which sum to e_ij (bertviz's neuron view), and q_i = W_Q h_i worked out for one component; and the
page's labels: the model's unit, upright single characters, the corner's "i ↓ j →" clear of the first
column, the lines' header inside its canvas.

Every number the page shows is compared with the trace's (the JSON's) own. Tolerances: the page's
q, k, h and W_Q are the float32 data itself (exact); its products of two float32 numbers are exact in
float64; its float64 sums differ from ``math.fsum`` by at most n·ε₆₄·Σ|terms| (summation order). The
model's own q_i[1] (float32) agrees with the float64 W_Q[1,:]·h_i + b_Q[1] to float32's bound for an
n-term dot product, (n + 2)·ε₃₂·(Σ|w_c h_c| + |b|) — the page's own ✓ rule, checked here against the
independent float64 value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import browser
import numpy as np
import pytest
import torch

from selfattention.models import trace
from selfattention.models.tracing import Trace
from selfattention.viz import html as viz_html
from selfattention.viz.data import AttentionData, from_weights
from selfattention.viz.html import payload, write_html

chrome = browser.chrome
SENTENCE = "I am enjoying this lecture"
E32, E64 = 2.0**-24, 2.0**-53


def with_inputs(t: Trace) -> AttentionData:
    """The trace's AttentionData with every layer's input h and each head's W_Q, b_Q (what the
    explorer needs for q_i = W_Q h_i), read through the trace's public API."""
    d = t.attention_data()
    order = sorted(t.layers)
    d.inputs = [t.layers[n].x.float().numpy() for n in order]
    heads = [[t.attention(n).head_projections(h) for h in range(d.num_heads)] for n in order]
    d.w_q = [torch.stack([p["W_Q"] for p in hs]).detach().float().numpy() for hs in heads]
    d.b_q = [None if hs[0]["b_Q"] is None else torch.stack([p["b_Q"] for p in hs]).detach().float().numpy()
             for hs in heads]
    return d


@pytest.fixture(scope="module")
def minilm() -> AttentionData:
    return with_inputs(trace("minilm", SENTENCE))


def characters(text: str = "hello=olleh.", L: int = 2, H: int = 2, d: int = 8) -> AttentionData:
    """A causal model of characters: random q, k, v and their exact masked softmax."""
    rng = np.random.default_rng(1)
    T = len(text)
    q, k, v = (rng.standard_normal((L, H, T, d)).astype(np.float32) for _ in range(3))
    e = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) / np.sqrt(d)
    e = np.where(np.tril(np.ones((T, T), bool)), e, -np.inf)
    a = np.exp(e - e.max(-1, keepdims=True))
    data = from_weights(list(a / a.sum(-1, keepdims=True)), list(text), q=list(q), k=list(k), v=list(v),
                        title="characters")
    data.unit = "characters"
    data.allowed = [np.tril(np.ones((T, T), bool))] * L
    return data


def open_page(driver: Any, data: AttentionData, path: Path, **opening: Any) -> None:
    write_html(data, path, **opening)
    driver.get("about:blank")
    browser.console_errors(driver)
    driver.get(path.resolve().as_uri())
    driver.find_element("css selector", "#explorer[data-ready='1']")
    assert browser.console_errors(driver) == []


def pair(driver: Any) -> dict[str, Any]:
    """What the pair view shows now."""
    return driver.execute_script("""
        const root = document.getElementById('explorer'), $ = id => document.getElementById(id);
        const values = s => { const e = document.querySelector(s);
                              return e ? JSON.parse(e.dataset.values) : null; };
        const rows = [...document.querySelectorAll('#qk tbody tr')], at = c => rows.map(r => +r.dataset[c]);
        const score = [...document.querySelectorAll('#steps tbody tr')][+root.dataset.key]
                      .querySelector('td.score');
        return {i: +root.dataset.word, j: +root.dataset.key, l: +root.dataset.layer, h: +root.dataset.head,
                q: at('q'), k: at('k'), p: at('p'),
                e: +$('qk-total').dataset.value, stepsE: score.textContent, sum: $('qk-sum').textContent,
                hvec: values('#qstep .h'), qvec: values('#qstep .q'), kvec: values('#qk-pair .k'),
                qrow: $('qrow-sum') ? +$('qrow-sum').dataset.value : null,
                qcheck: $('qrow-check') ? $('qrow-check').textContent : null,
                qstep: $('qstep').textContent};""")


def assert_pair(view: dict[str, Any], data: AttentionData) -> None:
    """q_i and k_j are the trace's; each product is q_i[c]·k_j[c]; they sum to e_ij, the steps' score."""
    l, h, i, j = view["l"], view["h"], view["i"], view["j"]
    q, k = data.q[l][h][i].astype(np.float64), data.k[l][h][j].astype(np.float64)
    assert view["q"] == q.tolist() and view["k"] == k.tolist()  # float32 → the page → back: exact
    assert view["p"] == (q * k).tolist()  # a product of two float32 numbers is exact in float64
    e = math.fsum(q * k)
    assert abs(view["e"] - e) <= len(q) * E64 * np.abs(q * k).sum()
    if view["stepsE"] != "−∞":  # a masked pair's score is −∞ in the steps table
        assert float(view["stepsE"]) == pytest.approx(e, abs=5e-5)  # it shows 4 decimals
    assert view["qvec"] == q[:8].tolist() and view["kvec"] == k[:8].tolist()


def test_the_pair_opens_on_the_key_the_word_attends_to_most(chrome, tmp_path: Path, minilm: AttentionData):
    open_page(chrome, minilm, tmp_path / "a.html", layer=1, head=4, word=4)
    view = pair(chrome)
    assert (view["l"], view["h"], view["i"]) == (0, 3, 3)
    assert view["j"] == int(np.argmax(minilm.weights[0][3][3]))  # "enjoying" → "lecture"
    assert_pair(view, minilm)
    assert f"e_4,{view['j'] + 1} = " in view["sum"] and "α_4," in view["sum"]


def test_q_is_w_q_times_h_worked_for_one_component(chrome, tmp_path: Path, minilm: AttentionData):
    open_page(chrome, minilm, tmp_path / "b.html", layer=2, head=7, word=3)
    view = pair(chrome)
    l, h, i = view["l"], view["h"], view["i"]
    hv = minilm.inputs[l][i].astype(np.float64)
    w, b = minilm.w_q[l][h][0].astype(np.float64), float(minilm.b_q[l][h][0])
    assert view["hvec"] == hv[:8].tolist()
    terms = w * hv
    want = math.fsum(terms) + b  # float64, independently of the page
    assert abs(view["qrow"] - want) <= (len(hv) + 1) * E64 * (np.abs(terms).sum() + abs(b))
    model = float(minilm.q[l][h][i][0])  # the model's own q_i[1], float32
    assert abs(model - want) <= (len(hv) + 2) * E32 * (np.abs(terms).sum() + abs(b))
    assert view["qcheck"].startswith("✓ the model's own q_3[1]")
    assert "q_3[1] = W_Q[1,:]·h_3 + b_Q[1] = " in view["qstep"] and "(384 products)" in view["qstep"]


def test_pointing_at_a_cell_or_a_row_picks_the_pair(chrome, tmp_path: Path, minilm: AttentionData):
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(chrome, minilm, tmp_path / "c.html", layer=1, head=4, word=2)
    matrix = chrome.find_element("css selector", "#matrix")
    top, left, cell, width, height = chrome.execute_script(
        "const c = arguments[0]; return [+c.dataset.rowTop, +c.dataset.colLeft, +c.dataset.rowHeight,"
        " c.clientWidth, c.clientHeight]", matrix)
    for i, j in ((5, 1), (2, 6), (0, 0)):
        x, y = left + (j + 0.5) * cell - width / 2, top + (i + 0.5) * cell - height / 2  # from the centre
        ActionChains(chrome).move_to_element_with_offset(matrix, round(x), round(y)).perform()
        view = pair(chrome)
        assert (view["i"], view["j"]) == (i, j)
        assert_pair(view, minilm)
    chrome.find_elements("css selector", "#steps tbody tr")[3].click()  # a row of the steps: j = 4
    view = pair(chrome)
    assert view["j"] == 3
    assert_pair(view, minilm)


def test_a_masked_pair_says_its_score_becomes_minus_infinity(chrome, tmp_path: Path):
    data = characters()
    open_page(chrome, data, tmp_path / "d.html", layer=2, head=1, word=4)
    chrome.find_elements("css selector", "#steps tbody tr")[9].click()  # j = 10 > i = 4: the future
    view = pair(chrome)
    assert (view["i"], view["j"]) == (3, 9)
    assert_pair(view, data)  # q·k is still computed …
    said = "character 10 is masked for character 4: the score becomes −∞ before the softmax, so α = 0"
    assert said in view["sum"]
    # … and this page has no h or W_Q: it says so and starts from q_i
    assert view["qrow"] is None and "not the layer's input h or W_Q" in view["qstep"]


def test_a_page_too_big_for_h_says_so(chrome, tmp_path: Path, minilm: AttentionData, monkeypatch):
    monkeypatch.setattr(viz_html, "QROW_FLOATS", 1000)
    omitted = payload(minilm)["qrow"]["omitted"]
    assert omitted.startswith("the layers' inputs are 6 × 7 × 384 = 16,128 numbers")
    open_page(chrome, minilm, tmp_path / "e.html")
    assert "more than this page carries (1,000)" in pair(chrome)["qstep"]


def test_bad_inputs_are_refused_naming_the_shape(minilm: AttentionData):
    bad = AttentionData(minilm.tokens, minilm.weights, minilm.q, minilm.k, minilm.v,
                        inputs=[x[:, :10] for x in minilm.inputs], w_q=minilm.w_q)
    with pytest.raises(ValueError, match=r"w_q needs one \(12, 32, 10\) array per layer"):
        payload(bad)


# --------------------------------------------------------------------------- labels and units


def boxes(driver: Any, canvas: str) -> tuple[list[dict[str, Any]], float, float]:
    """The text boxes a canvas drew (CSS px) and its size."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [JSON.parse(c.dataset.boxes), c.clientWidth, c.clientHeight];", canvas)


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["x0"] < b["x1"] and b["x0"] < a["x1"] and a["y0"] < b["y1"] and b["y0"] < a["y1"]


@pytest.mark.parametrize("which", ["characters", "minilm"])
def test_labels_stay_clear_and_inside(chrome, tmp_path: Path, minilm: AttentionData, which: str):
    data = characters() if which == "characters" else minilm
    open_page(chrome, data, tmp_path / f"{which}.html")
    drawn, width, height = boxes(chrome, "matrix")
    corner = drawn[-1]
    assert corner["text"] == "i ↓  j →"
    columns = [b for b in drawn[:-1] if b["y1"] < corner["y1"] + 40 and b["x0"] > corner["x0"]]
    assert columns and not any(overlap(corner, b) for b in drawn[:-1]), "the corner collides with a label"
    for b in drawn:
        assert 0 <= b["x0"] and b["x1"] <= width and 0 <= b["y0"] and b["y1"] <= height, b
    if which == "characters":  # one character per label: upright, one line high (a tilted "l" reads "\")
        top = min(b["y0"] for b in drawn[:-1])
        upright = [b for b in drawn[:-1] if b["y0"] == top]
        assert len(upright) == len(data.tokens) and all(b["y1"] - b["y0"] <= 12.5 for b in upright)
    head, width, height = boxes(chrome, "lines")
    one = "character" if which == "characters" else "word piece"
    assert [b["text"] for b in head] == [f"{one} i", f"{one} j"]
    for b in head:
        assert 0 <= b["x0"] and b["x1"] <= width, b  # the header is not clipped


def test_a_page_of_characters_never_says_word(chrome, tmp_path: Path):
    open_page(chrome, characters(), tmp_path / "units.html", layer=1, head=2, word=5)
    text = chrome.execute_script("return document.body.innerText + ' ' + "
                                 "document.getElementById('tokens').getAttribute('aria-label')")
    assert "word" not in text.lower()
    for phrase in ("character 5 “o”", "hover or click a character", "character j", "12 characters"):
        assert phrase in text, phrase


def test_a_trace_gives_the_explorer_h_and_w_q():
    """``Trace.attention_data()`` carries what q_i = W_Q h_i needs (models/tracing.py fills it)."""
    t = trace("minilm", SENTENCE)
    d = t.attention_data()
    assert d.inputs is not None and d.w_q is not None and d.b_q is not None
    ours = with_inputs(t)
    for a, b in zip(d.inputs + d.w_q + d.b_q, ours.inputs + ours.w_q + ours.b_q, strict=True):
        np.testing.assert_array_equal(a, b)
