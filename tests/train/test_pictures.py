"""The pictures of a run: attention snapshots as a PNG grid and a step-slider page (in headless
Chromium: the slider shows each step's weights in the shared palette, nothing runs from the data)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import browser
import numpy as np
import pytest
from _train_helpers import one_thread, tiny  # noqa: F401

from selfattention.train import metrics
from selfattention.train.loop import run
from selfattention.train.report import write_pictures
from selfattention.viz.data import from_weights
from selfattention.viz.steps import payload, pick, render_steps_html, save_steps_png, write_steps_html
from selfattention.viz.terminal import palette_rgb

chrome = browser.chrome
XSS = "</script><img src=x onerror=\"document.title='XSS'\">"


def snapshots(tokens: list[str], steps=(0, 50, 100), L: int = 2, H: int = 2, seed: int = 0):
    """Random causal attention weights at each step (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    T = len(tokens)
    out = []
    for s in steps:
        e = rng.standard_normal((L, H, T, T)) * (1 + s / 25)
        e[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
        w = np.exp(e - e.max(-1, keepdims=True))
        out.append((s, from_weights(list(w / w.sum(-1, keepdims=True)), tokens)))
    return out


def test_pick_spreads_steps_and_keeps_both_ends():
    assert pick([0, 100, 200], 5) == [0, 100, 200]
    assert pick(list(range(0, 2001, 100)), 5) == [0, 500, 1000, 1500, 2000]


def test_payload_carries_the_weights_exactly():
    snaps = snapshots(list("ab=ba."))
    p = payload(snaps, "t")
    W = np.frombuffer(base64.b64decode(p["weights"]), dtype="<f4").reshape(3, 2, 2, 6, 6)
    for i, (_, d) in enumerate(snaps):
        assert np.array_equal(W[i], np.stack(d.weights))
    assert p["steps"] == [0, 50, 100] and p["max"] == pytest.approx(float(W.max()))


def test_snapshots_must_show_one_sequence():
    a, b = snapshots(list("ab=ba.")), snapshots(list("ba=ab."))
    with pytest.raises(ValueError, match="of another sequence"):
        payload([a[0], b[1]])
    with pytest.raises(ValueError, match="must increase"):
        payload([a[1], a[0]])
    with pytest.raises(ValueError, match="no snapshots"):
        payload([])


def test_hostile_tokens_cannot_leave_the_data(tmp_path: Path):
    page = render_steps_html(snapshots([XSS, "b"]), title=XSS)
    assert XSS not in page
    data = re.search(r'<script type="application/json" id="steps-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["tokens"][0] == XSS


def test_png_grid(tmp_path: Path):
    path = save_steps_png(snapshots(list("abc=cba.")), tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_run_draws_its_curves_and_attention(tmp_path: Path):
    out = tmp_path / "run"
    run(tiny(steps=20, eval_every=5), out)
    steps = [s for s, _ in metrics.snapshot_files(out)]
    assert steps == [0, 5, 10, 15, 20]  # before any learning, then at every evaluation
    lines = write_pictures(out, "transformer on reverse")
    assert [line.split(":")[0] for line in lines] == [f"wrote {out / n}" for n in
                                                       ("curves.png", "attention.png", "attention.html")]
    for name in ("curves.png", "attention.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "attention.html").read_text()
    p = json.loads(re.search(r'id="steps-data">(.*?)</script>', page, re.S)[1])
    assert p["steps"] == steps and "".join(p["tokens"]).endswith(".") and "=" in p["tokens"]


def _pixel(driver, head: int, i: int, j: int) -> list[int]:
    """The colour of cell (i, j) of a head's canvas (sampled in the cell's middle)."""
    return driver.execute_script(
        "const c = document.querySelectorAll('#heads canvas')[arguments[0]];"
        "const cell = (c.width - 18) / arguments[3];"
        "return Array.from(c.getContext('2d').getImageData(18 + (arguments[2] + 0.5) * cell,"
        " 18 + (arguments[1] + 0.5) * cell, 1, 1).data.slice(0, 3));", head, i, j, 6)


def _move(driver, index: int) -> None:
    driver.execute_script("const s = document.getElementById('step'); s.value = String(arguments[0]);"
                          "s.dispatchEvent(new Event('input'));", index)


def test_the_slider_shows_each_steps_weights(chrome, tmp_path: Path):
    snaps = snapshots(list("ab=ba."))
    path = write_steps_html(snaps, tmp_path / "steps.html", "test").resolve()
    chrome.get("about:blank")
    browser.console_errors(chrome)  # reading the logs empties them
    browser.requested_urls(chrome)
    chrome.get(path.as_uri())
    assert browser.console_errors(chrome) == []
    urls = browser.requested_urls(chrome)
    assert urls and all(u == path.as_uri() or u.startswith("data:") for u in urls), urls
    assert chrome.find_element("css selector", "#step").get_attribute("max") == "2"
    assert chrome.find_element("css selector", "#step-label").text == "step 0"  # opens at the first
    assert len(chrome.find_elements("css selector", "#heads canvas")) == 2
    top = payload(snaps)["max"]
    from selenium.webdriver.support.ui import Select

    for index, (step, data) in enumerate(snaps):
        _move(chrome, index)
        assert chrome.find_element("css selector", "#step-label").text == f"step {step}"
        for layer in (0, 1):
            Select(chrome.find_element("css selector", "#layer")).select_by_value(str(layer))
            for head, i, j in ((0, 4, 1), (1, 5, 5), (1, 3, 0)):
                want = palette_rgb(float(data.weights[layer][head][i, j]) / top)
                got = _pixel(chrome, head, i, j)
                assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 2, (step, layer, head, i, j)


def test_hostile_tokens_run_nothing_in_the_page(chrome, tmp_path: Path):
    path = write_steps_html(snapshots([XSS, "b", "c"]), tmp_path / "x.html", XSS)
    chrome.get(path.resolve().as_uri())
    assert chrome.title == "Attention forming — " + XSS  # the text itself, never markup
    assert chrome.find_element("css selector", "#title").text.endswith(XSS)
    assert not chrome.find_elements("css selector", "img")
    assert browser.console_errors(chrome) == []
