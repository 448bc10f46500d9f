"""The HTML explorer: the embedding in Python, then the page itself in headless Chromium.

Browser tests check through the DOM that the page draws with no console errors and no network
request, that choosing a head or a word changes what is shown, that the numbers it shows are the
model's (α from Python's weights, e = q·k, z = Σ α v), that hostile words run nothing, and that it
stays quick for 128 words. Set SELFATTENTION_SCREENSHOT=path to keep the MiniLM screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import browser
import numpy as np
import pytest

from selfattention.models import trace
from selfattention.viz.data import AttentionData, from_weights
from selfattention.viz.html import embed_json, payload, render_html, write_html

chrome = browser.chrome  # one headless Chromium per module (skips, or fails under CI, without one)

SENTENCE = "I am enjoying this lecture"
XSS = ["<img src=x onerror=\"document.title='XSS'\">", "</script><script>document.title='XSS'</script>"]


def synthetic(T: int, L: int = 6, H: int = 12, d: int = 32, qkv: bool = True, seed: int = 0) -> AttentionData:
    """Random q, k, v of MiniLM's sizes and their exact softmax weights, through ``from_weights``."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((L, H, T, d)).astype(np.float32) for _ in range(3))
    e = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) / np.sqrt(d)
    a = np.exp(e - e.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    tokens = [f"word{i}" for i in range(T)]
    if qkv:
        return from_weights(list(a), tokens, q=list(q), k=list(k), v=list(v), title="synthetic")
    return from_weights(list(a), tokens, title="synthetic, weights only")


@pytest.fixture(scope="module")
def minilm() -> AttentionData:
    return trace("minilm", SENTENCE).attention_data()


# --------------------------------------------------------------------------- plain Python


def test_embed_json_cannot_close_the_script_element():
    obj = {"tokens": ["</script><script>alert(1)</script>", "<!--", "a & b > c", "\u2028\u2029"]}
    text = embed_json(obj)
    assert not set("<>&\u2028\u2029") & set(text)
    assert "\\u003c/script\\u003e" in text and "\\u2028\\u2029" in text
    assert json.loads(text) == obj


def test_page_is_self_contained_and_carries_the_weights_exactly():
    data = trace("toy", SENTENCE).attention_data()
    page = render_html(data)
    csp = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', page)
    assert csp and "default-src 'none'" in csp.group(1)
    assert not re.search(r"https?://|\ssrc=|@import|url\(", page), "the page must not reference anything"
    assert page.count("<script") == 2 and page.count("</script>") == 2
    embedded = json.loads(re.search(r'id="attention-data">(.*?)</script>', page, re.S).group(1))
    assert embedded["tokens"] == data.tokens and (embedded["layers"], embedded["heads"]) == (1, 1)
    weights = np.frombuffer(base64.b64decode(embedded["weights"]), dtype="<f4")
    np.testing.assert_array_equal(weights, data.weights[0].ravel())
    assert embedded["scale"] == pytest.approx(data.scale) and embedded["dk"] == data.q[0].shape[-1]


def test_write_html_is_atomic(tmp_path: Path):
    path = tmp_path / "explorer.html"
    path.write_text("old page")
    bad = AttentionData(["a", "b"], [np.full((1, 2, 2), 0.5, np.float32)],
                        q=[np.zeros((1, 2, 4), np.float32)], k=[np.zeros((1, 2, 3), np.float32)],
                        v=[np.zeros((1, 2, 4), np.float32)])
    with pytest.raises(ValueError, match="q has d = 4 but k has d = 3"):
        write_html(bad, path)
    assert path.read_text() == "old page"
    assert write_html(trace("toy", SENTENCE).attention_data(), path) == path
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explorer.html"], "no temporary file is left"


def test_payload_without_qkv_has_no_steps():
    out = payload(synthetic(5, L=2, H=3, qkv=False))
    assert (out["layers"], out["heads"], out["T"]) == (2, 3, 5)
    assert out["q"] is None and out["scale"] is None


# --------------------------------------------------------------------------- in the browser


def open_page(driver: Any, data: AttentionData, path: Path, **opening: Any) -> float:
    """Write the page, load it from disk, check it drew cleanly and offline; returns load seconds."""
    write_html(data, path, **opening)
    driver.get("about:blank")
    browser.console_errors(driver)  # reading a log empties it
    browser.requested_urls(driver)
    start = time.perf_counter()
    driver.get(path.as_uri())
    driver.find_element("css selector", "#explorer[data-ready='1']")
    seconds = time.perf_counter() - start
    assert browser.console_errors(driver) == []
    urls = browser.requested_urls(driver)
    assert urls and all(u == path.as_uri() or u.startswith("data:") for u in urls), urls
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    return seconds


def shown(driver: Any) -> dict[str, Any]:
    """What the page shows now: the selection, and the steps table's numbers."""
    return driver.execute_script("""
        const root = document.getElementById('explorer'), cells = s => [...document.querySelectorAll(s)];
        return {layer: +root.dataset.layer, head: +root.dataset.head, word: +root.dataset.word,
                caption: document.getElementById('selection').textContent,
                label: document.getElementById('word-label').textContent,
                alpha: cells('#steps td.alpha').map(td => +td.dataset.value),
                alphaText: cells('#steps td.alpha').map(td => +td.textContent),
                scores: cells('#steps td.score').map(td => +td.textContent),
                scoreText: cells('#steps td.score').map(td => td.textContent),
                z: cells('#z .z').map(s => +s.dataset.value),
                note: document.getElementById('steps-note').textContent,
                check: document.getElementById('check').textContent};""")


def assert_row(view: dict[str, Any], data: AttentionData) -> None:
    """The α's shown are the model's row for the selected layer, head and word.

    Tolerances: the page's numbers come from the same float32 data as ``row`` (no CPU-dependent
    arithmetic in between); they differ from it by float32 rounding of the model's softmax (≤ T·ε₃₂,
    ~1e-6 here) and, as text, by the display's 4 decimals (≤ 5e-5): 1e-4 bounds both.
    """
    row = data.weights[view["layer"]][view["head"]][view["word"]]
    assert len(view["alpha"]) == len(data.tokens)
    assert abs(sum(view["alpha"]) - 1) < 1e-3
    np.testing.assert_allclose(view["alpha"], row, atol=1e-4)
    np.testing.assert_allclose(view["alphaText"], row, atol=1e-4)


def test_toy_page_renders(chrome, tmp_path: Path):
    data = trace("toy", SENTENCE).attention_data()
    open_page(chrome, data, tmp_path / "toy.html")
    assert len(chrome.find_elements("css selector", "canvas.thumb")) == 1
    for selector in ("#layer", "#head", "#matrix", "#lines", "#legend", "#steps tbody tr"):
        assert chrome.find_elements("css selector", selector), selector
    view = shown(chrome)
    assert (view["layer"], view["head"], view["word"]) == (0, 0, 0) and "“I”" in view["label"]
    assert_row(view, data)
    assert "✓" in view["check"]
    chrome.find_element("css selector", "body").send_keys("\ue014")  # → : the next word
    assert shown(chrome)["word"] == 1


def test_choosing_a_head_changes_the_view(chrome, tmp_path: Path, minilm: AttentionData):
    from selenium.webdriver.support.ui import Select

    open_page(chrome, minilm, tmp_path / "minilm.html")
    before = shown(chrome)
    Select(chrome.find_element("css selector", "#head")).select_by_value("3")
    after = shown(chrome)
    assert (after["layer"], after["head"]) == (0, 3) and "head 4" in after["caption"]
    assert after["alpha"] != before["alpha"]
    assert_row(after, minilm)
    chrome.find_element("css selector", 'canvas.thumb[data-layer="4"][data-head="9"]').click()
    clicked = shown(chrome)
    assert (clicked["layer"], clicked["head"]) == (4, 9) and "layer 5 · head 10" in clicked["caption"]
    assert Select(chrome.find_element("css selector", "#layer")).first_selected_option.text == "5"
    assert chrome.find_element("css selector", "canvas.thumb.selected").get_attribute("data-head") == "9"
    assert_row(clicked, minilm)


def test_hovering_a_word_shows_its_row_and_steps(chrome, tmp_path: Path, minilm: AttentionData):
    from selenium.webdriver import ActionChains

    open_page(chrome, minilm, tmp_path / "minilm.html")
    chrome.find_element("css selector", 'canvas.thumb[data-layer="0"][data-head="3"]').click()
    ActionChains(chrome).move_to_element(chrome.find_elements("css selector", "#tokens button")[3]).perform()
    view = shown(chrome)
    assert view["word"] == 3 and "enjoying" in view["label"] and "enjoying" in view["caption"]
    assert_row(view, minilm)
    q, k, v = (x[0][3].astype(np.float64) for x in (minilm.q, minilm.k, minilm.v))  # layer 1, head 4
    # the page computes q·k and z in float64 from the same float32 q, k, v: only display rounding
    np.testing.assert_allclose(view["scores"], k @ q[3], atol=1e-4)
    np.testing.assert_allclose(view["z"], (minilm.weights[0][3][3] @ v)[: len(view["z"])], atol=1e-4)
    assert len(view["z"]) == 8 and "✓" in view["check"]
    lines = chrome.find_element("css selector", "#lines")  # the lines view: hover its 6th row
    top, height = (float(lines.get_attribute(a)) for a in ("data-row-top", "data-row-height"))
    y = top + 5.5 * height - lines.size["height"] / 2
    ActionChains(chrome).move_to_element_with_offset(lines, 0, round(y)).perform()
    assert shown(chrome)["word"] == 5 and "lecture" in shown(chrome)["label"]
    assert_row(shown(chrome), minilm)


def test_screenshot_is_not_blank(chrome, tmp_path: Path, full: AttentionData):
    import matplotlib.image

    open_page(chrome, full, tmp_path / "minilm.html", layer=1, head=4, word=4)  # as explain --html --word 4
    height, frame = chrome.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    chrome.set_window_size(1440, height + frame)  # the whole page, no scroll bar
    png = chrome.get_screenshot_as_png()
    if os.environ.get("SELFATTENTION_SCREENSHOT"):
        Path(os.environ["SELFATTENTION_SCREENSHOT"]).write_bytes(png)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    assert pixels.shape[1] >= 1000 and pixels.std() > 0.05
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} distinct colours"


def test_hostile_words_run_nothing(chrome, tmp_path: Path):
    tokens = ["hello", *XSS, "world"]
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 4, 8)).astype(np.float32) for _ in range(3))
    data = from_weights(np.full((1, 4, 4), 0.25, np.float32), tokens, q=q, k=k, v=v, title=XSS[1])
    open_page(chrome, data, tmp_path / "xss.html")
    for button in chrome.find_elements("css selector", "#tokens button"):
        button.click()  # every word's steps drawn once
    time.sleep(0.3)  # an injected <img> would fail to load and fire onerror by now
    assert chrome.title == f"Attention explorer — {XSS[1]}"
    assert chrome.find_elements("css selector", "img") == []
    assert len(chrome.find_elements("css selector", "script")) == 2
    text = chrome.find_element("css selector", "body").text
    assert XSS[0] in text and XSS[1] in text
    assert browser.console_errors(chrome) == []


def test_128_words_open_and_answer(chrome, tmp_path: Path):
    # How fast is benchmarks/explorer_speed.py's question (a timed test fails on a loaded machine);
    # here: a page of 128 words opens and each interaction lands on the right layer, head, word.
    data = synthetic(128)
    open_page(chrome, data, tmp_path / "big.html")
    chrome.execute_script("""
        const head = document.getElementById('head'), thumb = document.querySelectorAll('canvas.thumb')[70];
        const word = document.querySelectorAll('#tokens button')[100];
        head.value = '7'; head.dispatchEvent(new Event('change'));
        thumb.dispatchEvent(new MouseEvent('click'));
        word.dispatchEvent(new MouseEvent('mouseenter'));""")
    view = shown(chrome)
    assert (view["layer"], view["head"], view["word"]) == (5, 10, 100)
    assert_row(view, data)


def test_weights_only_page_says_the_steps_need_qkv(chrome, tmp_path: Path):
    data = synthetic(128, L=2, H=3, qkv=False)
    open_page(chrome, data, tmp_path / "weights.html")
    chrome.find_elements("css selector", "#tokens button")[17].click()
    view = shown(chrome)
    assert "need q, k and v" in view["note"] and view["scores"] == [] and view["z"] == []
    assert view["word"] == 17 and len(chrome.find_elements("css selector", "canvas.thumb")) == 6
    assert_row(view, data)


# --------------------------------------------------------------------------- the lecture's next steps


@pytest.fixture(scope="module")
def full() -> AttentionData:
    """MiniLM with what the explorer's mask and multi-head views need (as explain --html gives it)."""
    return trace("minilm", SENTENCE).attention_data()


@pytest.fixture(scope="module")
def causal() -> AttentionData:
    return trace("minilm", SENTENCE, causal=True).attention_data()


def test_the_page_opens_on_the_runs_layer_head_and_word(chrome, tmp_path: Path, full: AttentionData):
    open_page(chrome, full, tmp_path / "open.html", layer=3, head=5, word=4, vmax=1)
    view = shown(chrome)
    assert (view["layer"], view["head"], view["word"]) == (2, 4, 3)
    assert "layer 3 · head 5 · word piece 4 “enjoying”" in view["caption"]
    assert_row(view, full)
    texts = chrome.execute_script("""return [document.getElementById('legend-max').textContent,
        document.getElementById('word-unit').textContent, document.getElementById('subtitle').textContent]""")
    assert "fixed scale" in texts[0] and texts[1] == "word piece" and "7 word pieces" in texts[2]
    with pytest.raises(ValueError, match="word 8 is out of range"):
        write_html(full, tmp_path / "bad.html", word=8)


def test_a_causal_page_masks_the_future_and_still_checks(chrome, tmp_path: Path, causal: AttentionData):
    open_page(chrome, causal, tmp_path / "causal.html", layer=1, head=4, word=3)
    view = shown(chrome)
    assert view["word"] == 2
    assert view["scoreText"][3:] == ["−∞"] * 4 and all(t != "−∞" for t in view["scoreText"][:3])
    assert view["alpha"][3:] == [0, 0, 0, 0] and abs(sum(view["alpha"]) - 1) < 1e-6
    assert_row(view, causal)  # the model's own (causal) weights
    assert "✓" in view["check"] and "masked" in view["note"]
    assert chrome.execute_script("return document.getElementById('legend-mask').hidden") is False
    # in the matrix a masked cell (row 3, column 6) is the mask's grey, an allowed one (row 3, column 1) not
    cells = chrome.execute_script("""
        const cv = document.getElementById('matrix'), ctx = cv.getContext('2d');
        const dpr = window.devicePixelRatio || 1, cell = +cv.dataset.rowHeight;
        const top = +cv.dataset.rowTop, left = +cv.dataset.colLeft;
        const at = (i, j) => Array.from(ctx.getImageData(Math.round((left + (j + 0.5) * cell) * dpr),
                                                         Math.round((top + (i + 0.5) * cell) * dpr), 1, 1)
                                           .data.slice(0, 3));
        return [at(2, 5), at(2, 0)];""")
    from selfattention.viz.terminal import MASKED

    grey = [int(MASKED[k:k + 2], 16) for k in (1, 3, 5)]
    assert cells[0] == grey and cells[1] != grey


def test_the_multihead_view_stacks_concatenates_and_projects(chrome, tmp_path: Path, full: AttentionData):
    open_page(chrome, full, tmp_path / "heads.html", layer=2, head=1, word=4)
    got = chrome.execute_script("""
        const vals = s => [...document.querySelectorAll(s)].map(e => JSON.parse(e.dataset.values));
        return {z: vals('#mh td.zh'), concat: vals('#mh-flow .concat')[0], proj: vals('#mh-flow .proj')[0],
                own: vals('#mh-flow .own')[0], check: document.getElementById('mh-check').textContent};""")
    l, i = 1, 3
    v = full.v[l].astype(np.float64)  # (H, T, d)
    A = full.weights[l].astype(np.float64)[:, i]  # (H, T): every head's row α_i
    z = np.einsum("ht,htd->hd", A, v)  # each head's z_i = Σ_j α_ij v_j
    # the page recomputes α from q and k (float64): it agrees with the model's float32 weights to ~1e-6
    np.testing.assert_allclose(np.array(got["z"]), z, atol=1e-4)
    c = z.reshape(-1)  # the concatenation: head 1's z_i, then head 2's, …
    np.testing.assert_allclose(got["concat"], c[:8], atol=1e-4)
    o = full.w_o[l].astype(np.float64) @ c + full.b_o[l].astype(np.float64)
    np.testing.assert_allclose(got["proj"], o[:8], atol=1e-4)
    np.testing.assert_allclose(got["own"], full.outputs[l][i][:8], atol=1e-6)
    np.testing.assert_allclose(got["proj"], full.outputs[l][i][:8], atol=1e-4)
    assert got["check"].startswith("✓")
