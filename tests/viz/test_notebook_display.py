"""Inline display in Jupyter (viz.notebook, Trace's repr methods), checked on the HTML as a browser
parses it: the explorer's frame carries exactly the page ``explain --html`` writes, whatever the
words hold; nothing in it reaches the network; a head's α table holds the trace's numbers, written
as ``explain`` writes them; a plain repr is one short line.

Tolerance of the α table: a cell is the weight rounded to 3 decimals, so it is within 0.0005 of the
trace's float32 weight (plus that float32's own rounding, 2⁻²⁴ relative, far below); explain's own
table rounds its float64 loops' α, which agree with the float32 weights to far less than that, so
the two tables' cells are within 0.001 (two roundings).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import browser
import numpy as np
import pytest

from selfattention.explain import build_report, render_text
from selfattention.explain.selection import select
from selfattention.models import trace
from selfattention.viz.data import from_weights
from selfattention.viz.html import render_html
from selfattention.viz.notebook import Explorer, HeadWeights, explorer_html

SENTENCE = "I am enjoying this lecture"
HOSTILE = ["<b>bold</b>", "a&amp;b", 'say "hi"', "it's", "</iframe><script>alert(1)</script>", "&lt;"]


class Tags(HTMLParser):
    """Every start tag with its attributes (unescaped, as a browser reads them), and the text of each
    table row's cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.caption = ""
        self._cell: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._in_caption = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption:
            self.caption += data


def parse(text: str) -> Tags:
    p = Tags()
    p.feed(text)
    p.close()
    return p


def data_with(tokens: list[str]):
    rng = np.random.default_rng(0)
    T = len(tokens)
    w = rng.random((2, 3, T, T))
    return from_weights(list(w / w.sum(-1, keepdims=True)), tokens, title='a "model" <&>')


@pytest.fixture(scope="module")
def toy():
    return trace("toy", SENTENCE)


def frame_page(outer: str) -> str:
    """The srcdoc of the one iframe in ``outer``, as the browser reads it."""
    frames = [attrs for tag, attrs in parse(outer).tags if tag == "iframe"]
    assert len(frames) == 1
    return frames[0]["srcdoc"]


@pytest.mark.parametrize("tokens", [HOSTILE, ["plain", "words"], ["x"]])
def test_the_frame_holds_exactly_the_explorer_page(tokens):
    data = data_with(tokens)
    outer = explorer_html(data, layer=2, head=3, word=len(tokens))
    assert frame_page(outer) == render_html(data, layer=2, head=3, word=len(tokens))
    # nothing of the words escapes into the notebook's own document: one iframe and one note
    assert [tag for tag, _ in parse(outer).tags] == ["iframe", "p"]
    page = frame_page(outer)
    blob = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S)
    assert json.loads(blob.group(1))["tokens"] == tokens


def test_the_frame_is_sandboxed_and_reaches_no_network():
    outer = explorer_html(data_with(HOSTILE))
    (attrs,) = [a for tag, a in parse(outer).tags if tag == "iframe"]
    assert attrs["sandbox"] == "allow-scripts"  # never allow-same-origin: the notebook stays out of reach
    page = frame_page(outer)
    assert not re.search(r"https?:|//[a-z]", outer + page, re.I)
    linked = [v for _, a in parse(page).tags for k, v in a.items() if k in ("src", "href", "action")]
    assert all(v.startswith("data:") for v in linked), linked
    assert "default-src 'none'" in page  # the page's own policy forbids every request


def test_explorer_html_refuses_a_bad_height():
    with pytest.raises(ValueError, match="height"):
        explorer_html(data_with(["a", "b"]), height=0)


def test_a_trace_shows_the_explorer_inline(toy):
    page = frame_page(toy._repr_html_())
    assert page == render_html(toy.attention_data())


def test_a_traces_explorer_opens_where_explain_opens():
    t = trace("minilm", SENTENCE)
    sel = select(t)
    assert sel.head != 0  # else the test could not tell explain's head from the first
    assert frame_page(t._repr_html_()) == render_html(t.attention_data(), layer=sel.layer + 1,
                                                      head=sel.head + 1)


def test_attention_data_shows_the_explorer_inline_and_a_short_repr():
    from selfattention import viz

    data = data_with(HOSTILE)
    assert frame_page(viz.Explorer(data)._repr_html_()) == render_html(data)
    assert "\n" not in repr(data) and len(repr(data)) <= 160 and "array" not in repr(data)


def test_a_partial_trace_shows_its_heads_not_an_error():
    t = trace("minilm", SENTENCE, layers=[1])
    tables = [p for p in re.split(r"(?=<table)", t._repr_html_()) if p.startswith("<table")]
    assert len(tables) == 12 and "<iframe" not in t._repr_html_()


def test_the_head_table_holds_the_traces_weights(toy):
    h = toy.head(1, 1)
    rows = parse(h._repr_html_()).rows
    assert rows[0] == ["", *toy.tokens.tokens, "row sum"]
    assert [r[0] for r in rows[1:]] == toy.tokens.tokens
    cells = [r[1:-1] for r in rows[1:]]
    assert all(re.fullmatch(r"\d\.\d{3}", c) for row in cells for c in row)
    A = toy.layers[0].weights[0].double().numpy()
    assert np.abs(np.array(cells, dtype=float) - A).max() <= 0.0005 + 1e-6
    assert np.abs(np.array([r[-1] for r in rows[1:]], dtype=float) - A.sum(1)).max() <= 0.0005 + 1e-6


def test_the_head_table_matches_explains_alpha_table(toy):
    text = render_text(build_report(toy), width=100)
    start = text.index("3. Weights α_ij")
    lines = text[start:].splitlines()[2:2 + len(toy.tokens.tokens)]
    printed = np.array([line.split()[1:] for line in lines], dtype=float)  # columns and the row sum
    html_rows = np.array([r[1:] for r in parse(toy.head(1, 1)._repr_html_()).rows[1:]], dtype=float)
    assert printed.shape == html_rows.shape
    assert np.abs(printed - html_rows).max() <= 0.001 + 1e-9


def test_hostile_words_are_text_in_the_head_table():
    T = len(HOSTILE)
    h = HeadWeights(HOSTILE, np.full((T, T), 1 / T), layer=1, head=1, title="<i>model</i>")
    p = parse(h._repr_html_())
    table = ("table", "caption", "thead", "tbody", "tr", "th", "td")
    assert [tag for tag, _ in p.tags if tag not in table] == []
    assert p.rows[0][1:-1] == HOSTILE and [r[0] for r in p.rows[1:]] == HOSTILE
    assert "<i>model</i>" in p.caption


def test_control_characters_are_shown_not_obeyed():
    h = HeadWeights(["a\x1b[2J", "b\u202e"], np.eye(2), layer=1, head=1)
    assert parse(h._repr_html_()).rows[0][1:3] == ["a\\x1b[2J", "b\\u202e"]


def test_a_causal_trace_greys_its_masked_cells():
    t = trace("toy", SENTENCE, causal=True)
    tds = [a["style"] for tag, a in parse(t.head(1, 1)._repr_html_()).tags if tag == "td"]
    T = 5
    grey = [i for i, s in enumerate(tds) if "#d5d9e0" in s]  # the views' MASKED colour
    per_row = T + 1  # T weights and the row sum
    assert grey == [r * per_row + c for r in range(T) for c in range(r + 1, T)]
    assert "mask" in t.head(1, 1).caption


def test_characters_are_numbered_as_explain_numbers_them():
    h = HeadWeights(list("ab=ba"), np.eye(5), layer=2, head=1, unit="characters")
    assert parse(h._repr_html_()).rows[0][1:-1] == ["1:a", "2:b", "3:=", "4:b", "5:a"]


@pytest.mark.parametrize("layer, head, what", [(0, 1, "layer 0"), (2, 1, "layer 2"), (1, 2, "head 2"),
                                               (True, 1, "layer True"), (1, 1.0, "head 1.0")])
def test_head_names_what_is_out_of_range(toy, layer, head, what):
    with pytest.raises(ValueError, match=re.escape(what)):
        toy.head(layer, head)


def test_head_weights_refuse_a_matrix_that_does_not_fit():
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        HeadWeights(["a", "b", "c"], np.eye(2), layer=1, head=1)
    with pytest.raises(ValueError, match="NaN"):
        HeadWeights(["a"], np.array([[np.nan]]), layer=1, head=1)


def test_reprs_are_one_short_line(toy):
    long = trace("toy", " ".join(f"word{i}" for i in range(300)))
    for r in (repr(toy), repr(long), repr(toy.layers[0]), repr(toy.head(1, 1)),
              repr(Explorer(toy.attention_data()))):
        assert "\n" not in r and len(r) <= 160, r
    assert repr(toy) == 'Trace(the toy model (D = 64, seed 0): "I am enjoying this lecture", 5 words, ' \
                        "1 layer × 1 head)"
    assert "300 words" in repr(long) and "…" in repr(long)
    assert "tensor" not in repr(toy.layers[0])


def test_print_of_a_head_is_explains_table(toy):
    header = str(toy.head(1, 1)).splitlines()[1]
    explain = render_text(build_report(toy), width=100)
    assert header in explain.splitlines()  # the very header line of explain's α table


# --------------------------------------------------------------------------- in the browser

chrome = browser.chrome  # one headless Chromium per module (skips, or fails under CI, without one)


def test_the_explorer_draws_inside_its_frame_offline_and_walled_off(chrome, toy, tmp_path):
    """A host page standing in for the notebook, holding what ``_repr_html_`` returns: the explorer
    draws in its frame with no console error and no request, and its scripts cannot reach the host."""
    host = tmp_path / "notebook.html"
    host.write_text('<!DOCTYPE html><meta charset="utf-8"><title>host</title><body><div id="out">'
                    + toy._repr_html_() + "</div>", encoding="utf-8")
    chrome.get("about:blank")
    browser.console_errors(chrome)  # reading a log empties it
    browser.requested_urls(chrome)
    chrome.get(host.as_uri())
    chrome.switch_to.frame(chrome.find_element("css selector", "iframe"))
    try:
        chrome.find_element("css selector", "#explorer[data-ready='1']")
        assert chrome.execute_script("return document.getElementById('word-label').textContent")
        reach = chrome.execute_script(
            "try { return window.parent.document.title; } catch (e) { return e.name; }")
        assert reach == "SecurityError"
    finally:
        chrome.switch_to.default_content()
    assert chrome.title == "host"
    assert browser.console_errors(chrome) == []
    urls = browser.requested_urls(chrome)
    assert all(u in (host.as_uri(), "about:srcdoc") or u.startswith("data:") for u in urls), urls
