"""``selfattention serve`` on the command line: its options refused in one line, and the command
itself in a process: the URL printed, the page served, a non-loopback --host warned about, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from _cli import run_cli


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port: must be between 0 and 65535"),
    (["--max-chars", "0"], "--max-chars: must be between 1 and 20000"),
    (["--timeout", "0"], "--timeout: must be above 0"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "toy", "--host", "no such host.invalid"], "--host 'no such host.invalid'"),
    (["--model", "toy", "--text", "a\x07b"], "--text: the text has a control character (U+0007)"),
])
def test_bad_options_are_one_line_and_exit_2(argv, message):
    rc, out, err = run_cli("serve", *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_serve_is_a_command():
    rc, out, _ = run_cli("serve", "--help")
    assert rc == 0 and "--max-chars" in out and "--open" in out


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_command_serves_warns_off_loopback_and_stops_on_ctrl_c():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "selfattention", "serve", "--model", "toy", "--host", "0.0.0.0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving the attention explorer of ") and "(Ctrl-C stops)" in line, line
        port = int(line.split("http://0.0.0.0:")[1].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b"attention-data" in r.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "0.0.0.0 is not a loopback address: anyone on the network" in err
    assert proc.returncode in (0, 130), err
