"""Keypress → updated page in ``selfattention serve``, timed in headless Chromium with MiniLM.

The server runs in this process (``serve.cli.start``, as the command does, model on one thread).
Each round types the last character of a 12-word sentence into the page's text box (selenium's
send_keys: a real key event); the page's input handler sends the request at once, and the page
stamps ``data-update-ms`` (from that handler to the explorer drawn again: request, model, JSON,
decoding and every view) when it has mounted the answer. The last character alternates, so each
round is a new sentence. Prints the median, the interquartile range and the load average.

    python benchmarks/serve_latency.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import browser  # noqa: E402  (tests/browser.py: the same headless Chromium as the HTML tests)

SEQ = "return document.getElementById('explorer').dataset.seq"  # the page's count of answers drawn
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank"  # 12 words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    import tempfile

    import torch

    from selfattention.explain.cli import load_model
    from selfattention.serve.app import Limits
    from selfattention.serve.cli import start

    torch.set_num_threads(1)
    served = start(load_model(None, dim=None, seed=None, positions=None), text=None, limits=Limits())
    threading.Thread(target=served.run, daemon=True).start()
    while not served.server.started:
        time.sleep(0.02)
    with tempfile.TemporaryDirectory() as profile:
        driver = browser.start_chrome(Path(profile))
        try:
            driver.get(served.url)
            driver.find_element("css selector", "#explorer[data-ready='1']")
            box = driver.find_element("css selector", "#text")
            ms = []
            for n in range(args.rounds + 2):  # two warm-up rounds
                driver.execute_script("arguments[0].value = arguments[1]", box, SENTENCE)  # no request
                seq = int(driver.execute_script(SEQ))
                box.send_keys(".!"[n % 2])
                while int(driver.execute_script(SEQ)) == seq:
                    time.sleep(0.005)
                if n >= 2:
                    ms.append(float(driver.execute_script(
                        "return document.getElementById('explorer').dataset.updateMs")))
        finally:
            driver.quit()
    served.server.should_exit = True
    q1, med, q3 = statistics.quantiles(ms, n=4)
    print(f"keypress → updated page, MiniLM, 12 words ({len(ms)} rounds, {os.cpu_count()} cores): "
          f"median {med:.0f} ms (IQR {q1:.0f}–{q3:.0f} ms); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
