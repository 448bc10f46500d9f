"""docs/notebooks/lecture.ipynb runs as stored: executed headless (nbclient, an ipykernel on this
interpreter) with no error cell, and each of the lecture's results present in its outputs.

The notebook is stored without outputs (a test checks it), so what it shows is always what the code
computes now. Tolerances are the project's own: float64 against float64 at ``ATOL64`` (tests/_rules);
the float64 loops against a float32 layer at ``explain``'s ``LAYER_TOLERANCE``, against the toy's
float64 layer at ``TOLERANCE`` (explain's ``tolerance_for``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from _rules import ATOL64

from selfattention.explain.walk import LAYER_TOLERANCE, TOLERANCE

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).parent.parent / "docs" / "notebooks" / "lecture.ipynb"
# The lecture's order: each section's heading, as the notebook titles it.
SECTIONS = ["1. The toy layer", "2. All words at once", "3. A real model", "4. Multi-head",
            "5. Masked (causal)", "6. Word order and positions", "7. Attention learned",
            "8. Its anti-diagonal"]


def stored():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_notebook_is_stored_valid_and_without_outputs():
    nb = stored()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert len(headings) == len(SECTIONS)
    assert all(h.startswith(f"## {s}") for h, s in zip(headings, SECTIONS, strict=True)), headings


def test_the_notebook_links_nothing_outside_the_repo():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)


def _kernel_on_this_python(root: Path, monkeypatch) -> None:
    """A "python3" kernelspec that starts this interpreter, first on JUPYTER_PATH, so the kernel is
    never another Python found on the machine; IPython's profile in ``root`` too (no user startup)."""
    spec = root / "share" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(root / "share"))
    monkeypatch.setenv("IPYTHONDIR", str(root / "ipython"))


def _text(cell) -> str:
    """Everything a code cell showed as text: its printed lines and its results' text/plain."""
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
    return "".join(out)


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the outputs"
    return float(found.group(1))


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_notebook_runs_as_stored(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    _kernel_on_this_python(tmp_path, monkeypatch)
    nb = stored()
    n_stored = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))  # which Python ran it
    work = tmp_path / "work"
    work.mkdir()
    start = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                   resources={"metadata": {"path": str(work)}}).execute()
    seconds = time.perf_counter() - start
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert _text(nb.cells[-1]).strip() == sys.executable
    text = "\n".join(_text(c) for c in nb.cells[:n_stored] if c.cell_type == "code")
    html = [o.data["text/html"] for c in code for o in c.outputs
            if o.output_type in ("execute_result", "display_data") and "text/html" in o.data]

    # 1. the toy's q, k, v, e, α, z, and the loops equal to the layer's own z (the toy is float64)
    for name in ("q_1 =", "k_1 =", "v_1 =", "z_1 =", "row sums: [1. 1. 1. 1. 1.]"):
        assert name in text
    assert _number(r"loops vs the layer's own z: max \|Δ\| = (\S+)", text) <= TOLERANCE
    # 2. the matrix form (and every CPU tier) equal to the loops
    assert "matrix form == loops: True" in text
    assert _number(r"matrix form vs our loops: max \|Δz\| = (\S+)", text) <= ATOL64
    assert _number(r"package's loops vs ours:  max \|Δz\| = (\S+)", text) <= ATOL64
    tiers = re.findall(r"attention\(backend='(\w+)'\) vs the loops: max \|Δz\| = (\S+)", text)
    assert [b for b, _ in tiers] == ["matrix", "blockwise", "torch"]
    assert all(float(x) <= ATOL64 for _, x in tiers)
    # 3. MiniLM: the explorer inline, offline; explain's default head
    frames = [h for h in html if h.startswith("<iframe srcdoc=")]
    assert len(frames) == 2  # MiniLM's explorer and the trained model's
    assert not any(re.search(r"https?://", h) for h in html)
    assert 'Trace(all-MiniLM-L6-v2: "I am enjoying this lecture", 7 word pieces, 6 layers × 12 heads)' in text
    head = int(_number(r"layer 1, head (\d+): the one of this layer mixing", text))
    # 4. multi-head: W_O over the stacked heads is the layer's own output
    assert _number(r"W_O c_i \+ b_O vs the layer's own output: max \|Δ\| = (\S+)", text) <= LAYER_TOLERANCE
    assert len(re.findall(r"head +\d+: 'i' attends most to", text)) == 12
    # 5. causal: nothing above the diagonal, rows still sum to 1
    assert _number(r"largest weight above the diagonal: (\S+)", text) == 0.0
    assert f"α of layer 1, head {head}" in "\n".join(html)
    # 6. positions: without them every z only moves with its word; with them the z's change
    assert _number(r"no positions: .* max \|Δz\| = (\S+)", text) <= ATOL64
    assert _number(r"sinusoidal positions: .* max \|Δz\| = (\S+)", text) > 0.01
    # 7, 8. the training run and its anti-diagonal: most of one head's weight on the mirror letter
    assert re.search(r"step +\d+/\d+ +loss", text)
    assert _number(r"anti-diagonal: head \d of layer 2, (\S+) of its weight on the mirror", text) > 0.5
    print(f"the notebook ran in {seconds:.1f} s")
