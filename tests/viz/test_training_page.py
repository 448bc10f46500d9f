"""The training page (``attention.html``, ``viz.steps``): it opens at the first step on the layer where
attention formed the most, says so in one caption, greys the masked future, shows a cell's weight on
hover and keeps every head in view at 1366×768.

Rule for "in view": at a 1366×768 viewport every head's canvas lies wholly inside it (so nothing needs
scrolling, sideways or down) for runs of up to 8 heads of up to 34 characters (a reverse run has 4 heads
and 34); and the page is never wider than the window.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import browser
import numpy as np
import pytest
import torch

from selfattention.train import metrics
from selfattention.train.report import write_pictures
from selfattention.viz.data import from_weights
from selfattention.viz.steps import caption, clearest, payload, plot_steps, row_entropy, write_steps_html
from selfattention.viz.terminal import MASKED, palette_rgb

chrome = browser.chrome
TOKENS = list("abcdefghijklmnop=ponmlkjihgfedcba.")  # reverse's example: 34 characters


def causal_uniform(T: int) -> np.ndarray:
    """(T, T): row i spread evenly over positions 1 … i."""
    A = np.tril(np.ones((T, T)))
    return A / A.sum(-1, keepdims=True)


def mirror(T: int) -> np.ndarray:
    """(T, T), causal: each row on one position, its mirror image where that is in the past, else itself."""
    A = np.zeros((T, T))
    for i in range(T):
        A[i, T - 1 - i if T - 1 - i <= i else i] = 1.0
    return A


def run_snapshots(T: int = len(TOKENS), H: int = 4, sharp: int = 1, steps=(0, 100, 200), L: int = 2,
                  tokens: list[str] | None = None) -> list[tuple[int, Any]]:
    """A run's snapshots: every layer starts even (causal); layer ``sharp`` (0-based) moves to the
    mirror pattern, the others stay even; characters, causal mask."""
    tokens = tokens or (TOKENS * math.ceil(T / len(TOKENS)))[:T]
    out = []
    for n, step in enumerate(steps):
        f = n / (len(steps) - 1)  # 0 → 1: the mirror pattern forms
        formed = (1 - f) * causal_uniform(T) + f * mirror(T)
        layers = [np.stack([formed if layer == sharp else causal_uniform(T)] * H).astype(np.float32)
                  for layer in range(L)]
        d = from_weights(layers, tokens)
        d.unit = "characters"
        d.allowed = [np.tril(np.ones((T, T), bool))] * L
        out.append((step, d))
    return out


# --------------------------------------------------------------------------- plain Python


def test_row_entropy_is_ln_n_for_even_rows_and_0_for_one_hot():
    T = 6
    even = np.stack([np.stack([causal_uniform(T)] * 2)])  # (L=1, H=2, T, T)
    assert row_entropy(even)[0] == pytest.approx(np.mean([math.log(n) for n in range(1, T + 1)]))
    assert row_entropy(np.stack([np.stack([mirror(T)] * 2)]))[0] == 0.0


@pytest.mark.parametrize("sharp", [0, 1])
def test_the_page_opens_on_the_layer_that_sharpened(sharp):
    snaps = run_snapshots(sharp=sharp)
    layer, first, last = clearest(snaps)
    assert layer == sharp and last[sharp] == pytest.approx(0.0, abs=1e-6) and first[sharp] > 2
    text = caption(snaps)
    assert text.startswith(f"Layer {sharp + 1} is shown first")
    assert "almost evenly over the characters before it and itself" in text and "grey: the future" in text
    p = payload(snaps)
    assert p["layer"] == sharp and p["caption"] == text and p["unit"] == "characters"


def test_the_mask_travels_with_the_page():
    snaps = run_snapshots(T=5, H=1, L=2)
    allowed = np.frombuffer(base64.b64decode(payload(snaps)["allowed"]), np.uint8).reshape(2, 5, 5)
    assert (allowed == np.tril(np.ones((5, 5)))).all()
    no_mask = [(s, from_weights(d.weights, d.tokens)) for s, d in snaps]
    assert payload(no_mask)["allowed"] is None and "grey" not in caption(no_mask)


def test_a_runs_page_is_in_characters_with_its_causal_mask(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    snaps = run_snapshots(T=8, H=2)
    for step, d in snaps:  # what training writes: weights (L, H, T, T) of the example
        metrics.save_snapshot(out, step, d.tokens, torch.from_numpy(np.stack(d.weights)))
    lines = write_pictures(out, "transformer on reverse")
    assert any("attention.html" in line for line in lines)
    page = (out / "attention.html").read_text(encoding="utf-8")
    p = json.loads(re.search(r'id="steps-data">(.*?)</script>', page, re.S)[1])
    assert p["unit"] == "characters" and p["layer"] == 1 and p["caption"].startswith("Layer 2 is shown first")
    allowed = np.frombuffer(base64.b64decode(p["allowed"]), np.uint8).reshape(2, 8, 8)
    assert (allowed == np.tril(np.ones((8, 8)))).all()


def test_the_png_grid_greys_the_future_and_labels_every_column_upright():
    snaps = run_snapshots(T=12, H=2, tokens=list("hello=olleh."))
    fig = plot_steps(snaps, rows=3)
    assert "the character attending" in fig.texts[0].get_text()
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 3 * 4  # 3 steps × (2 layers × 2 heads)
    for ax in maps:
        shown = np.ma.getmaskarray(ax.images[0].get_array())
        assert (shown == ~np.tril(np.ones((12, 12), bool))).all()  # the future is masked: drawn grey
        assert ax.images[0].cmap.get_bad()[:3] == pytest.approx(
            [int(MASKED[k:k + 2], 16) / 255 for k in (1, 3, 5)])
    for ax in maps[-4:]:  # the bottom row: every column labelled, one character upright
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert labels and all(t.get_rotation() == 0 for t in labels)


# --------------------------------------------------------------------------- in the browser


def open_page(driver: Any, snaps, path: Path, size: tuple[int, int] | None = None) -> None:
    """Write the page and load it from disk, at a viewport of ``size`` CSS pixels if given; no errors,
    no request but the page itself."""
    write_steps_html(snaps, path, "transformer on reverse")
    if size is not None:
        driver.set_window_size(*size)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])  # the viewport, not the window
        assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(size)
    driver.get("about:blank")
    browser.console_errors(driver)
    browser.requested_urls(driver)
    driver.get(path.resolve().as_uri())
    driver.find_element("css selector", "body[data-ready='1']")
    assert browser.console_errors(driver) == []
    urls = browser.requested_urls(driver)
    assert urls and all(u == path.resolve().as_uri() or u.startswith("data:") for u in urls), urls


def pixel(driver: Any, head: int, i: int, j: int) -> list[int]:
    """The colour in the middle of cell (i, j) of a head's canvas."""
    return driver.execute_script("""
        const c = document.querySelectorAll('#heads canvas')[arguments[0]];
        const cell = +c.dataset.cell, label = +c.dataset.label;
        const x = label + (arguments[2] + 0.5) * cell, y = label + (arguments[1] + 0.5) * cell;
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
        """, head, i, j)


def test_it_opens_at_step_0_on_the_clearest_layer_with_its_caption(chrome, tmp_path: Path):
    snaps = run_snapshots(sharp=1)
    open_page(chrome, snaps, tmp_path / "a.html")
    body = chrome.find_element("css selector", "body")
    assert body.get_attribute("data-step") == "0" and body.get_attribute("data-layer") == "1"
    assert chrome.find_element("css selector", "#step-label").text == "step 0"
    assert chrome.find_element("css selector", "#caption").text == caption(snaps)
    top = payload(snaps)["max"]
    grey = [int(MASKED[k:k + 2], 16) for k in (1, 3, 5)]
    for head, i, j in ((0, 0, 0), (2, 10, 3), (3, 33, 33)):  # allowed cells: their weight's colour
        want = palette_rgb(float(snaps[0][1].weights[1][head][i, j]) / top)
        assert max(abs(a - b) for a, b in zip(pixel(chrome, head, i, j), want, strict=True)) <= 2
    for head, i, j in ((0, 0, 1), (3, 10, 30)):  # the future: grey, outside the palette
        assert pixel(chrome, head, i, j) == grey


def hover(driver: Any, head: int, i: int, j: int) -> dict[str, str]:
    """Point at cell (i, j) of a head; what the readout says."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_elements("css selector", "#heads canvas")[head]
    cell, label, size = (driver.execute_script(f"return +arguments[0].{k}", canvas)
                         for k in ("dataset.cell", "dataset.label", "clientWidth"))
    x, y = label + (j + 0.5) * cell - size / 2, label + (i + 0.5) * cell - size / 2  # from the centre
    ActionChains(driver).move_to_element_with_offset(canvas, round(x), round(y)).perform()
    return driver.execute_script("const v = document.getElementById('value');"
                                 "return {text: v.textContent, ...v.dataset};")


def test_hovering_a_cell_shows_its_weight(chrome, tmp_path: Path):
    snaps = run_snapshots(sharp=1)
    open_page(chrome, snaps, tmp_path / "b.html")
    chrome.execute_script("const s = document.getElementById('step'); s.value = '2';"
                          "s.dispatchEvent(new Event('input'));")  # the last step, layer 2
    for head, i, j in ((1, 20, 13), (0, 5, 2), (3, 33, 0)):
        got = hover(chrome, head, i, j)
        want = float(snaps[2][1].weights[1][head][i, j])
        assert (int(got["head"]), int(got["i"]), int(got["j"])) == (head, i, j)
        assert float(got["value"]) == pytest.approx(want, abs=1e-7)
        assert got["text"].endswith(f"α = {want:.4f}")
        assert f"character {i + 1} {json.dumps(TOKENS[i])} → character {j + 1}" in got["text"]
    got = hover(chrome, 2, 4, 9)
    assert "masked (the future), α = 0" in got["text"]


@pytest.mark.parametrize("H, T", [(4, 34), (8, 34), (2, 12)])
def test_every_head_is_in_view_at_1366_by_768(chrome, tmp_path: Path, H: int, T: int):
    open_page(chrome, run_snapshots(T=T, H=H), tmp_path / f"c{H}.html", size=(1366, 768))
    boxes = chrome.execute_script("""return [...document.querySelectorAll('#heads canvas')]
        .map(c => { const r = c.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    assert len(boxes) == H
    for left, top, right, bottom in boxes:
        assert 0 <= left and right <= 1366 and 0 <= top and bottom <= 768, (left, top, right, bottom)
    width = chrome.execute_script("const d = document.documentElement; return [d.scrollWidth, d.clientWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    assert chrome.execute_script("return +document.querySelector('#heads canvas').dataset.cell") >= 3
