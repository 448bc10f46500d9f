"""``selfattention serve`` in headless Chromium: type two sentences, one after the other; the table,
the heatmap and the step lines follow each, with explain --json's numbers for it."""

from __future__ import annotations

import json

import browser
import numpy as np
import pytest
from _cli import run_cli
from _live import live

from selfattention.serve.app import Limits

chrome = browser.chrome
SENTENCES = ["The quick brown fox jumps over the lazy dog near the river bank", "Attention is all you need"]


@pytest.fixture(scope="module")
def server():
    from selfattention.explain.cli import load_model

    with live(load_model(None, dim=None, seed=None, positions=None), Limits(timeout=20)) as s:
        yield s


SHOWN = """
const root = document.getElementById('explorer'), cells = s => [...document.querySelectorAll(s)];
const cv = document.getElementById('matrix');
return {seq: +root.dataset.seq, text: root.dataset.text, layer: +root.dataset.layer, head: +root.dataset.head,
        word: +root.dataset.word, tokens: cells('#tokens button').map(b => b.textContent),
        alpha: cells('#steps td.alpha').map(td => +td.dataset.value),
        scores: cells('#steps td.score').map(td => +td.textContent),
        heatmap: cv.toDataURL(), lines: document.getElementById('lines').toDataURL(),
        status: document.getElementById('live-status').textContent};"""


def test_typing_two_sentences_updates_the_page_with_explains_numbers(chrome, server):
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get("about:blank")
    browser.console_errors(chrome)  # reading a log empties it
    browser.requested_urls(chrome)
    chrome.get(f"http://{server.host}:{server.port}/")
    chrome.find_element("css selector", "#explorer[data-ready='1']")
    assert browser.console_errors(chrome) == []
    box = chrome.find_element("css selector", "#text")
    assert box.is_displayed() and box.get_attribute("value") == "I am enjoying this lecture"
    before = chrome.execute_script(SHOWN)
    for n, sentence in enumerate(SENTENCES, 1):
        box.clear()
        box.send_keys(sentence)
        WebDriverWait(chrome, 30).until(lambda d, s=sentence: d.execute_script(SHOWN)["text"] == s)
        view = chrome.execute_script(SHOWN)
        rc, out, _ = run_cli("explain", sentence, "--json")
        ref = json.loads(out)
        assert (view["layer"], view["head"], view["word"]) == (ref["layer"] - 1, ref["head"] - 1,
                                                               ref["derivation"]["index"] - 1)
        assert view["tokens"] == ref["tokens"] and view["status"] == ""
        i = view["word"]
        # The page computes α and e in float64 from the model's float32 q and k; explain's A and E come
        # from float64 loops over the same H and W's: they differ by float32's rounding of q and k
        # (~1e-6 relative) — far below the 4 decimals shown and any wrong row (≥ 1e-2).
        np.testing.assert_allclose(view["alpha"], ref["A"][i], atol=1e-4)
        np.testing.assert_allclose(view["scores"], ref["E"][i], atol=1e-3 * max(1, np.abs(ref["E"][i]).max()))
        assert view["heatmap"] != before["heatmap"] and view["lines"] != before["lines"]
        assert view["seq"] >= n
        before = view
    assert browser.console_errors(chrome) == []
    urls = [u for u in browser.requested_urls(chrome) if not u.startswith("data:")]
    assert all(u.startswith(f"http://{server.host}:{server.port}/") for u in urls), urls
