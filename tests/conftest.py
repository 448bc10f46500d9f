"""Fixtures and hooks of the whole suite. The helpers are modules of their own: ``_rules`` (the
float64 reference and the accuracy rules), ``_problems`` (hypothesis's attention problems), ``_cli``
(the command line in this process), ``browser`` (headless Chromium), ``_marks`` (the marks).

Marks: ``scripts/dev test --quick`` leaves out ``_marks.HEAVY``. ``browser`` and ``compile`` are
applied here by rule; a test that starts a Python process or calls torch.compile without its mark
fails (the hooks at the end), so the quick lane stays what it says.
"""

from __future__ import annotations

import os
import random
import subprocess
import zlib

# torch's idle OpenMP threads sleep instead of spinning. On a machine that other work also keeps
# busy, spinning threads took the core the working thread needed: the tiny problems of this suite
# ran 10-70 times slower (gradcheck 3.6 s instead of 0.05 s at load 5). The same threads split the
# same work, so no result changes. Read once, when torch loads OpenMP: hence before `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Re-exported for the modules that still import them from here (tests/test_layers.py,
# test_transformer.py, test_blockwise.py, test_block_mask*.py, tests/distributed/, ...) until they
# import _rules, _problems and _cli themselves; then these lines go.
from _cli import model_dir_copy, run_cli  # noqa: E402, F401
from _marks import by_rule, missing, python_program  # noqa: E402
from _problems import call_kwargs, problems  # noqa: E402, F401
from _rules import (  # noqa: E402, F401
    ATOL64,
    EPS32,
    F64,
    assert_close,
    causal_np,
    flash_rule,
    formula_rule,
    layer_norm_rows,
    naive_torch,
    randn,
    ref_attention,
    softmax_rows,
)
from hypothesis import HealthCheck, settings  # noqa: E402

# The Triton kernel's tests need Triton's interpreter (TRITON_INTERPRET=1 set before Triton is
# imported) or a GPU; scripts/dev test runs them in a second pytest process with the variable set.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available() else ["kernels"]

# Tolerance-sensitive tests (peers, the README's figures, low precision) carry the mark
# ``numerics``; CI runs them again on one thread (scripts/dev test), since rounding depends on the
# thread count. SELFATTENTION_TEST_THREADS sets torch's intra-op threads for the whole session.
if os.environ.get("SELFATTENTION_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["SELFATTENTION_TEST_THREADS"]))


def pytest_report_header(config):
    import platform

    cpu = platform.processor() or platform.machine()
    return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, cpu {cpu}"


settings.register_profile(
    "selfattention",
    max_examples=30,
    deadline=None,
    # function_scoped_fixture: the autouse seeding below, which hypothesis's own seeding overrides
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
    print_blob=True,
    # Under CI the examples are fixed (derived from each test), so a red build can be re-run as
    # is; elsewhere each run draws new ones and keeps exploring.
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("selfattention")


@pytest.fixture(autouse=True)
def _seeded(request):
    """torch's, NumPy's and random's global generators seeded from the test's own name: a test that
    draws from them gets the same numbers whichever tests ran before it, and on any machine."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# --- marks: applied by rule, and checked ----------------------------------------------------------

def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", item.name)
        for mark in by_rule(item.path.stem, name, getattr(item, "fixturenames", ())):
            item.add_marker(mark)


_running: list[pytest.Item] = []  # the test being set up (its fixtures too), run or torn down


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _check(started: str | None = None, compiled: bool = False) -> None:
    """Fail the running test at once where it lacks the mark for what it is about to do."""
    if not _running:
        return
    item = _running[-1]
    lacking = missing({m.name for m in item.iter_markers()}, [started] if started else [], compiled)
    if lacking:
        pytest.fail(f"{item.nodeid}: " + "; ".join(lacking) + " (tests/_marks.py: the quick lane "
                    "must leave it out)", pytrace=False)


def pytest_configure(config):
    """Watch every process start and torch.compile call of the session (restored at its end)."""
    popen_init, compile_ = subprocess.Popen.__init__, torch.compile

    def watched_init(self, args, *a, **kw):
        program = python_program(args)
        if program:
            self._child_created = False  # (Popen.__del__ reads it, should the check fail)
            _check(started=program)
        popen_init(self, args, *a, **kw)

    def watched_compile(*a, **kw):
        _check(compiled=True)
        return compile_(*a, **kw)

    subprocess.Popen.__init__, torch.compile = watched_init, watched_compile
    config.add_cleanup(lambda: (setattr(subprocess.Popen, "__init__", popen_init),
                                setattr(torch, "compile", compile_)))
