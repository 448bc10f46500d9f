"""``selfattention serve`` over real HTTP on loopback: the data of a sentence is explain's, and the
hostile requests of issue 21 get one line each while the server stays up, its memory flat and
its files untouched. The limits (queue, timeout) are checked with a stand-in model that waits."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from _cli import run_cli
from _live import live, live_app, one_line
from _rules import ATOL64, formula_rule, softmax_rows

from selfattention.serve.app import ENDPOINT, Limits

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank"  # 12 words
JSON = {"Content-Type": "application/json"}
LIMITS = Limits(max_chars=200, timeout=2.0, queue=8, connections=64)


@pytest.fixture(scope="module")
def minilm():
    from selfattention.explain.cli import load_model

    return load_model(None, dim=None, seed=None, positions=None)


@pytest.fixture(scope="module")
def server(minilm):
    with live(minilm, LIMITS) as s:
        yield s


def _floats(b64: str, shape: tuple[int, ...]) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape)


def _alpha(H, WQ, bQ, WK, bK, scale):
    """α = softmax((W_Q H + b_Q)ᵀ (W_K H + b_K) · scale), rows; H (D, T), W (d, D)."""
    Q, K = WQ @ H + bQ[:, None], WK @ H + bK[:, None]
    return softmax_rows((Q.T @ K) * scale)


@pytest.mark.parametrize("causal", [False, True])
def test_the_served_data_is_explain_jsons(server, causal):
    """The sentence's data (opening layer, head, word; tokens; α and q of that head) is what
    ``explain --json`` gives: its α is the float64 formula of explain's own H and W's (to 1e-10),
    and the served float32 α and q meet FlashAttention's rule against it."""
    status, body = server.ask(SENTENCE, causal=causal)
    assert status == 200
    got = json.loads(body)
    rc, out, _ = run_cli("explain", SENTENCE, "--json", *(["--causal"] if causal else []))
    assert rc == 0
    ref = json.loads(out)
    l, h, T, dk = ref["layer"] - 1, ref["head"] - 1, ref["T"], ref["d_k"]
    assert got["tokens"] == ref["tokens"] and got["T"] == T and got["dk"] == dk
    assert got["initial"] == {"layer": l, "head": h, "word": ref["derivation"]["index"] - 1}
    assert got["warning"] is None and (got["allowed"] is not None) == causal
    A = _floats(got["weights"], (got["layers"], got["heads"], T, T))[l, h]
    q = _floats(got["q"], (got["layers"], got["heads"], T, dk))[l, h]
    H, scale = np.array(ref["H"]), ref["scale"]
    WQ, WK, b = np.array(ref["W_Q"]), np.array(ref["W_K"]), ref["biases"]
    bQ, bK = np.array(b["b_Q"]), np.array(b["b_K"])
    if not causal:  # explain's own α is this formula (a causal α masks it)
        np.testing.assert_allclose(ref["A"], _alpha(H, WQ, bQ, WK, bK, scale), atol=ATOL64)
        formula_rule(A, _alpha, H, WQ, bQ, WK, bK, np.asarray(scale), what="served α")
    else:
        np.testing.assert_array_equal(np.triu(np.array(ref["A"]), 1), 0)
        np.testing.assert_array_equal(np.triu(A, 1), 0)
    np.testing.assert_allclose(ref["Q"], WQ @ H + bQ[:, None], atol=ATOL64)
    formula_rule(q, lambda H, W, b: (W @ H + b[:, None]).T, H, WQ, bQ, what="served q")


def test_the_page_is_the_explorer_in_its_live_mode(server):
    status, headers, page = server.request("GET", "/")
    text = page.decode("utf-8")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in text and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert not re.search(r"https?://|\ssrc=|@import|url\(", text), "the page must not reference anything"
    data = json.loads(re.search(r'id="attention-data">(.*?)</script>', text, re.S).group(1))
    assert data["live"] == {"endpoint": ENDPOINT, "text": "I am enjoying this lecture", "max_chars": 200,
                            "causal": False, "warning": None}
    assert server.request("HEAD", "/")[0] == 200


@pytest.mark.slow
def test_a_text_cut_to_the_models_length_says_so_as_explain_does(minilm):
    text = "!" * 600  # 602 word pieces: past MiniLM's 512 positions
    with live(minilm, Limits(max_chars=600, timeout=60)) as big:
        status, body = big.ask(text)
    assert status == 200
    got = json.loads(body)
    rc, _, err = run_cli("explain", text, "--json")
    assert rc == 0 and got["warning"] and got["warning"] in err and "602 word pieces" in got["warning"]
    assert got["T"] == 512 and got["dropped"] == 90


# --------------------------------------------------------------------------- hostile requests

REQ = "POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def post(body: str) -> str:
    """A JSON POST of ``body`` (latin-1: one byte per character, so "\xff" is the byte 0xff)."""
    return REQ + f"Content-Length: {len(body)}\r\n\r\n" + body

HOSTILE = {
    # name: (raw request, expected status)
    "huge declared body": (REQ + "Content-Length: 1000000000\r\n\r\n{", 413),
    "huge chunked body": (REQ + "Transfer-Encoding: chunked\r\n\r\n"
                          + ("4000\r\n" + "a" * 0x4000 + "\r\n") * 4 + "0\r\n\r\n", 413),
    "invalid UTF-8": (post('{"text":"\xff"}'), 400),
    "a control character": (post('{"text":"a\\u0000b"}'), 400),
    "an escape sequence": (post('{"text":"\\u001b[2J"}'), 400),
    "a lone surrogate": (post('{"text":"\\ud800"}'), 400),
    "PUT /": ("PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 405),
    "GET the API": ("GET /api/attention HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    "DELETE the API": ("DELETE /api/attention HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    "an unknown path": ("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    "/../": ("GET /../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    "/%2e%2e/": ("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    "a file path as the text": (post('{"text": "/etc/passwd"}'), 200),
    "a list": (post("[]"), 400),
    "a string": (post('"hi"'), 400),
    "text a number": (post('{"text":5}'), 400),
    "no text": (post("{}"), 400),
    "an unknown field": (post('{"text":"a","file":"/x"}'), 400),
    "causal not a bool": (post('{"text":"a","causal":"yes"}'), 400),
    "deep nesting": (post("[" * 3000), 400),
    "not JSON": (post("hello"), 400),
    "too many characters": (post('{"text":"' + "a" * 201 + '"}'), 400),
    "form data": ("POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-"
                  "urlencoded\r\nContent-Length: 6\r\n\r\ntext=a", 415),
    "another Host": ("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400),
    "garbage": ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n", 400),
}


def _status(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert m, answer[:200]
    if b"transfer-encoding: chunked" in head.lower():  # one chunk: its size line, the data
        body = body.split(b"\r\n", 2)[1]
    return int(m.group(1)), body


def _close(raw: str) -> bytes:
    """The request with Connection: close, so that the answer ends when the server closes."""
    head, sep, body = raw.partition("\r\n\r\n")
    return (head + "\r\nConnection: close" + sep + body).encode("latin-1")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_request_gets_one_line(server, name):
    raw, expected = HOSTILE[name]
    status, body = _status(server.raw(_close(raw)))
    assert status == expected, body[:300]
    if status != 200:
        print(f"{name}: {status} {one_line(body)}")
    assert server.ask("I am here")[0] == 200  # the server stays up


@pytest.mark.slow  # waits out the header deadline (wall time, little CPU)
def test_slow_clients_get_408(server):
    start = time.monotonic()
    answer = server.raw(b"POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1\r\n", wait=10)  # headers never end
    assert _status(answer)[0] == 408 and "headers did not arrive" in one_line(_status(answer)[1])
    assert time.monotonic() - start < LIMITS.timeout + 3
    answer = server.raw(_close(REQ + 'Content-Length: 30\r\n\r\n{"text": '), wait=10)  # a body that stops
    assert _status(answer)[0] == 408 and "body did not arrive" in one_line(_status(answer)[1])
    assert server.ask("I am here")[0] == 200


@pytest.mark.slow
def test_a_burst_of_1000_keeps_the_server_up_and_its_memory_flat(server):
    """1,000 requests at once (100 connections at a time): each is answered (200, or 503 busy: past
    the queue or the connection limit), the server answers afterwards, its memory grows < 50 MB."""
    body = json.dumps({"text": SENTENCE}).encode()
    for _ in range(10):  # warm: allocator arenas, the tokenizer's caches
        server.ask(SENTENCE)
    rss = psutil.Process().memory_info().rss
    raw = _close(REQ + f"Content-Length: {len(body)}\r\n\r\n" + body.decode())
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(lambda _: _status(server.raw(raw, wait=60))[0], range(1000)))
    grown = (psutil.Process().memory_info().rss - rss) / 2**20
    print(f"burst: {statuses.count(200)} answered, {statuses.count(503)} busy; memory +{grown:.1f} MB")
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0
    assert server.ask(SENTENCE)[0] == 200 and grown < 50


_opened: list[tuple[str, object]] = []
_watching = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if _watching.is_set() and event in ("open", "os.remove", "os.rename", "os.mkdir", "os.listdir",
                                        "os.scandir", "shutil.rmtree", "os.truncate", "os.symlink"):
        _opened.append((event, args[0] if args else None))


def test_no_request_reads_or_writes_a_file(server):
    """The server reads the model once, at start; while it answers requests — file names as text,
    traversal, hostile bodies — nothing opens, lists, writes or removes a file (Python's audit hooks
    see every open from Python)."""
    server.ask("warm up")
    sys.addaudithook(_audit)
    _watching.set()
    try:
        for text in ("/etc/passwd", "../../../../etc/shadow", "file:///etc/hosts", "~/.ssh/id_rsa", SENTENCE):
            assert server.ask(text)[0] == 200
        for name in ("/../", "/%2e%2e/", "an unknown field", "huge declared body"):
            server.raw(_close(HOSTILE[name][0]))
        server.request("GET", "/")
    finally:
        _watching.clear()
    assert _opened == []


# --------------------------------------------------------------------------- the queue and the timeout


@pytest.mark.slow  # waits out a request's deadline
def test_past_the_queue_503_at_once_and_a_slow_sentence_503_after_the_timeout():
    release = threading.Event()

    def explore(text: str, causal: bool) -> bytes:
        release.wait(10)
        return json.dumps({"text": text}).encode()

    limits = Limits(max_chars=50, timeout=1.0, queue=2)
    with live_app(b"page", explore, limits) as s, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(s.ask, f"sentence {n}") for n in range(2)]  # 1 running, 1 waiting
        time.sleep(0.3)
        start = time.monotonic()
        status, body = s.ask("one more")
        assert status == 503 and "the server is busy" in one_line(body) and time.monotonic() - start < 0.5
        for f in waiting:  # the two held ones run out of time
            status, body = f.result()
            assert status == 503 and "took more than 1 s" in one_line(body)
        release.set()
        time.sleep(0.2)  # the running one ends, the waiting one was cancelled: both places free
        assert s.ask("again") == (200, b'{"text": "again"}')
