"""The marks the quick lane reads (tests/_marks.py): applied by rule, registered, the same in
scripts/dev, and checked while tests run, so that a test which starts Python or compiles without
its mark fails at once instead of slowing the quick lane down."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _marks import HEAVY, QUICK, by_rule, missing, python_program

ROOT = Path(__file__).parent.parent


def test_every_mark_is_registered_and_the_quick_lane_is_the_one_in_scripts_dev(pytestconfig):
    registered = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert set(HEAVY) | {"numerics"} <= registered
    assert "--strict-markers" in pytestconfig.getini("addopts")  # a misspelt mark: an error, not a new one
    (expression,) = re.findall(r'pytest -m "([^"]+)"', (ROOT / "scripts" / "dev").read_text())
    assert expression == QUICK


def test_browser_and_compile_are_applied_by_rule():
    assert by_rule("test_html", "test_opens", ["chrome", "tmp_path"]) == ["browser"]
    assert by_rule("test_compile", "test_attention_dynamic_shapes", []) == ["compile"]
    assert by_rule("test_custom_op", "test_compiled_model_fullgraph", []) == ["compile"]
    assert by_rule("test_functional", "test_gradcheck", ["tmp_path"]) == []


@pytest.mark.parametrize("args, python", [
    ([sys.executable, "-m", "selfattention", "explain", "x"], True),
    ([str(Path(sys.executable).with_name("selfattention")), "embed", "a"], True),
    ([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"], True),
    (["python3", "-c", "pass"], True),
    (["bash", "scripts/dev", "test"], True),
    (f"{sys.executable} -c 'print(1)'", True),
    ([b"/usr/bin/python3.11", b"-V"], True),
    (["sha256sum", "--check", "SHA256SUMS"], False),
    (["/usr/bin/chromedriver", "--port=0"], False),
    (["g++", "-O3", "x.cpp"], False),
])
def test_python_programs_are_told_from_others(args, python):
    assert (python_program(args) is not None) == python


def test_what_a_test_lacks_is_said():
    py = ["python -m selfattention train"]
    torchrun = ["python -m torch.distributed.run --nproc_per_node 2 -m selfattention train"]
    assert missing(set(), py, False) == ["it starts a Python process (python -m selfattention train) but is "
                                         "not marked subprocess"]
    assert missing({"subprocess"}, py, False) == []
    assert missing({"compile"}, py, False) == []  # Inductor's own workers
    assert missing({"subprocess"}, torchrun, False) == ["it starts torchrun but is not marked distributed"]
    assert missing({"subprocess", "distributed"}, torchrun, False) == []
    assert missing({"slow"}, [], True) == ["it calls torch.compile but is not marked compile"]
    assert missing(set(), [], False) == []


def test_an_unmarked_python_process_fails_before_it_starts():
    with pytest.raises(pytest.fail.Exception, match="starts a Python process .* not marked subprocess"):
        subprocess.run([sys.executable, "-c", "import sys; sys.exit(3)"], check=False)
    assert subprocess.run(["true"]).returncode == 0  # not Python: not counted


def test_an_unmarked_dynamo_call_fails_at_once():
    with pytest.raises(pytest.fail.Exception, match="calls torch.compile but is not marked compile"):
        torch.compile(lambda x: x + 1)


@pytest.mark.subprocess
def test_a_marked_test_may_start_python():
    r = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=60)
    assert r.stdout == "42\n"
