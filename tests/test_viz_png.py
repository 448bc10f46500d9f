"""``selfattention.viz``: PNG heatmaps, the shared palette, from_weights, the bertviz export.

The PNGs are read back with matplotlib and checked for what a reader needs: the size the dpi asks
for, real content (many colours, the palette's brightest colour where the largest weight is), and
tick labels that do not overlap however many words there are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from selfattention import models, viz
from selfattention.viz import png, terminal
from selfattention.viz.data import AttentionData

SENTENCE = "I am enjoying this lecture"
WORDS60 = " ".join(f"w{i}" for i in range(60))  # 60 toy tokens


@pytest.fixture(scope="module")
def toy() -> AttentionData:
    return models.trace("toy", SENTENCE).attention_data()


@pytest.fixture(scope="module")
def minilm() -> AttentionData:
    return models.trace("minilm", SENTENCE).attention_data()


def rgb(hex_color: str) -> np.ndarray:
    return np.array(terminal.hex_to_rgb(hex_color)) / 255.0


def read_png(path: Path) -> np.ndarray:
    """(h, w, 3) floats in [0, 1]; fails unless path holds a valid PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def assert_picture(img: np.ndarray, fig: Figure, dpi: int) -> None:
    """The size the figure and dpi ask for, many colours, and the palette's ends present."""
    w_in, h_in = fig.get_size_inches()
    h, w = img.shape[:2]  # Agg truncates size × dpi to whole pixels: allow that rounding
    assert abs(h - h_in * dpi) < 1 and abs(w - w_in * dpi) < 1, (img.shape, h_in * dpi, w_in * dpi)
    colours = np.unique((img * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: blank?"
    assert img.std() > 0.1
    for end in (terminal.PALETTE[0], terminal.PALETTE[-1]):  # the colour bar at least has both ends
        assert (np.abs(img - rgb(end)).max(-1) < 3 / 255).any(), f"{end} not in the picture"


def test_colormap_is_the_shared_palette():
    cmap = png.palette_cmap()
    np.testing.assert_allclose(cmap(0.0)[:3], rgb(terminal.PALETTE[0]), atol=1e-9)
    np.testing.assert_allclose(cmap(1.0)[:3], rgb(terminal.PALETTE[-1]), atol=1e-9)
    for t in np.linspace(0, 1, 17):  # and in between, the terminal's interpolation (256-step LUT)
        np.testing.assert_allclose(cmap(float(t))[:3], np.array(terminal.palette_rgb(t)) / 255, atol=4 / 255)


def test_value_range_convention():
    assert terminal.value_range(np.array([[0.2, 0.7], [0.1, 0.3]])) == (0.0, pytest.approx(0.7))
    assert terminal.value_range(np.zeros((3, 3))) == (0.0, 1.0)  # nothing above 0: a unit scale
    assert terminal.value_range(np.array([-2.0, 1.0])) == (-2.0, 1.0)
    # the terminal heatmap uses it too: 0.5 of a max of 1.0 is a middle shade, not the lowest
    out = terminal.heatmap(np.array([[0.5, 1.0]]), ["a"], ["x", "y"])
    row = out.splitlines()[1]
    assert row.split()[1][0] == terminal.SHADES[2] and terminal.SHADES[-1] in row
    assert "0 to 1 (the max), 5 equal steps" in out.splitlines()[-1]


@pytest.mark.parametrize("which", ["toy", pytest.param("minilm", marks=pytest.mark.slow)])
def test_one_head_png(tmp_path, request, which):
    data = request.getfixturevalue(which)
    head = 4 if which == "minilm" else 1
    out = png.save_png(data, tmp_path / "a.png", layer=1, head=head, dpi=80)
    assert out == tmp_path / "a.png"
    fig = png.plot_head(data, 1, head).figure
    assert_picture(read_png(out), fig, 80)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


@pytest.mark.slow
def test_all_heads_png(tmp_path, minilm):
    out = png.save_png(minilm, tmp_path / "h.png", layer=2, all_heads=True, dpi=60)
    fig = png.plot_heads(minilm, 2)
    assert_picture(read_png(out), fig, 60)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 12  # the colour bar's axes holds no image
    assert [ax.get_title() for ax in maps] == [f"head {h}" for h in range(1, 13)]
    assert "Layer 2 of all-MiniLM-L6-v2: all 12 heads" in fig.texts[0].get_text()
    # one colour scale for the grid: 0 to the largest weight of the layer
    norms = {(im.norm.vmin, im.norm.vmax) for ax in maps for im in ax.images}
    assert len(norms) == 1
    assert next(iter(norms)) == (0.0, pytest.approx(float(minilm.weights[1].max())))


def test_dpi_sets_the_pixel_size(tmp_path, toy):
    a = read_png(png.save_png(toy, tmp_path / "a.png", dpi=50))
    b = read_png(png.save_png(toy, tmp_path / "b.png", dpi=100))
    assert abs(b.shape[0] - 2 * a.shape[0]) <= 1 and abs(b.shape[1] - 2 * a.shape[1]) <= 1


def test_brightest_cell_is_the_largest_weight(toy):
    ax = png.plot_head(toy, 1, 1)
    im = ax.images[0]
    A = toy.weights[0][0]
    np.testing.assert_array_equal(im.get_array(), A)
    i, j = np.unravel_index(A.argmax(), A.shape)
    colour = im.cmap(im.norm(A[i, j]))[:3]
    np.testing.assert_allclose(colour, rgb(terminal.PALETTE[-1]), atol=1e-9)
    title = "Layer 1, head 1 — toy model, D = 64, random untrained W's (seed 0)"
    assert ax.get_title().replace("\n", " ") == title  # wrapped to fit the figure
    assert [t.get_text() for t in ax.get_xticklabels()] == toy.tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == toy.tokens


def _overlaps(labels) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in labels if t.get_text()]
    return [(a, b) for (a, ba), (b, bb) in zip(boxes, boxes[1:], strict=False) if ba.overlaps(bb)]


@pytest.mark.parametrize("T", [3, *(pytest.param(T, marks=pytest.mark.slow) for T in (60, 250))])
def test_labels_do_not_overlap(T):
    tokens = [f"tok{i}" if i % 7 else f"representation{i}" for i in range(T)]
    rng = np.random.default_rng(T)
    W = rng.random((2, T, T))
    data = viz.from_weights(W / W.sum(-1, keepdims=True), tokens, title="random")
    ax = png.plot_head(data, 1, 2)
    fig = ax.figure
    fig.canvas.draw()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert _overlaps(labels) == []
        shown = [t.get_text() for t in labels if t.get_text()]
        assert len(shown) >= min(T, 30)  # long inputs: every k-th word, not a handful
        assert all(t.get_fontsize() >= png.MIN_FONT for t in labels)
    grid = png.plot_heads(data, 1)
    grid.canvas.draw()
    for a in grid.axes[:2]:  # and in a grid of heads
        assert _overlaps(a.get_xticklabels()) == [] and _overlaps(a.get_yticklabels()) == []


@pytest.mark.slow
def test_sixty_words(tmp_path):
    data = models.trace("toy", WORDS60).attention_data()
    assert len(data.tokens) == 60
    out = png.save_png(data, tmp_path / "long.png", dpi=40)
    assert_picture(read_png(out), png.plot_head(data, 1, 1).figure, 40)


@pytest.mark.slow
def test_sixty_words_pretrained(tmp_path):
    data = models.trace("minilm", " ".join(["lecture", "attention", "words", "the"] * 15)).attention_data()
    assert len(data.tokens) == 62
    out = png.save_png(data, tmp_path / "heads.png", layer=6, all_heads=True, dpi=30)
    assert_picture(read_png(out), png.plot_heads(data, 6), 30)


def test_plot_head_draws_into_a_given_axes(toy):
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert png.plot_head(toy, ax=ax) is ax and ax.images and ax.figure is fig


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": 0}, "layer 0 is out of range: the data has layers 1 to 6"),
    ({"layer": 7}, "layer 7 is out of range"),
    ({"head": 13}, "head 13 is out of range: the data has heads 1 to 12"),
    ({"dpi": 0}, "dpi 0 is out of range"),
])
def test_bad_layer_head_dpi(tmp_path, minilm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        png.save_png(minilm, tmp_path / "x.png", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_words_are_plain_text_not_tex(tmp_path):
    tokens = ["$\\frac$", "$x$", "$", "a_b"]  # mathtext would fail on the first, typeset the second
    data = viz.from_weights(np.full((2, 4, 4), 0.25), tokens, title="$\\bad$")
    ax = png.plot_head(data)
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    png.save_png(data, tmp_path / "a.png", dpi=30)
    png.save_png(data, tmp_path / "b.png", dpi=30, all_heads=True)
    assert len(list(tmp_path.iterdir())) == 2


def test_one_word_and_no_words(tmp_path):
    one = viz.from_weights(np.ones((1, 1)), ["solo"])
    png_shape = read_png(png.save_png(one, tmp_path / "one.png", dpi=30)).shape
    assert png_shape[0] > 50
    with pytest.raises(ValueError, match="no tokens"):
        png.save_png(viz.from_weights(np.ones((1, 0, 0)), []), tmp_path / "none.png")
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]


def test_unwritable_paths_leave_nothing(tmp_path, toy):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        png.save_png(toy, tmp_path)
    with pytest.raises(FileNotFoundError, match="the folder .*nope does not exist"):
        png.save_png(toy, tmp_path / "nope" / "a.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        png.save_png(toy, tmp_path / "file" / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder(tmp_path, toy):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            png.save_png(toy, folder / "a.png")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_failed_write_keeps_the_old_file(tmp_path, toy, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def broken(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="No space left"):
        png.save_png(toy, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.slow
def test_threads_draw_at_once(tmp_path, toy):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            png.save_png(toy, tmp_path / f"{n}.png", dpi=40)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    first = read_png(tmp_path / "0.png")
    for n in range(1, 4):
        np.testing.assert_array_equal(read_png(tmp_path / f"{n}.png"), first)


# --- from_weights, to_bertviz, the public API ---------------------------------------------------

def test_from_weights_shapes():
    T = 4
    one = viz.from_weights(np.eye(T), list("abcd"))
    assert one.num_layers == 1 and one.num_heads == 1 and one.weights[0].shape == (1, T, T)
    bertviz_layout = [torch.rand(1, 3, T, T) for _ in range(2)]
    d = viz.from_weights(bertviz_layout, list("abcd"))
    assert d.num_layers == 2 and d.num_heads == 3 and d.weights[0].dtype == np.float32
    assert d.q is None and d.scale is None
    q = [np.ones((3, T, 8))] * 2
    d = viz.from_weights(bertviz_layout, list("abcd"), q=q, k=q, v=q)
    assert d.scale == pytest.approx(1 / np.sqrt(8))


@pytest.mark.parametrize("weights, extra, match", [
    (np.zeros((2, 3, 3)), {}, r"weights\[0\] has shape \(2, 3, 3\), expected \(H, 4, 4\) for 4 tokens"),
    (np.zeros((4, 5)), {}, r"expected \(H, 4, 4\)"),
    (torch.zeros(2, 1, 4, 4), {}, "weights"),  # bertviz layout with a batch of 2
    ([np.zeros((2, 4, 4)), np.zeros((3, 4, 4))], {}, "same number of heads"),
    ([], {}, "weights is empty"),
    (np.full((4, 4), np.nan), {}, "NaN or inf"),
    (np.eye(4), {"q": np.zeros((1, 4, 2))}, "q, k and v together"),
    (np.eye(4), {"q": np.zeros((1, 4, 2)), "k": np.zeros((1, 4, 2)), "v": np.zeros((1, 3, 2))},
     r"v\[0\] has shape"),
])
def test_from_weights_errors(weights, extra, match):
    with pytest.raises(ValueError, match=match):
        viz.from_weights(weights, list("abcd"), **extra)


def test_to_bertviz(minilm):
    out = viz.to_bertviz(minilm)
    assert isinstance(out, list) and len(out) == 6
    for t, w in zip(out, minilm.weights, strict=True):
        assert isinstance(t, torch.Tensor) and tuple(t.shape) == (1, 12, 7, 7)
        np.testing.assert_array_equal(t[0].numpy(), w)
    back = viz.from_weights(out, minilm.tokens)  # and it is a layout from_weights takes
    np.testing.assert_array_equal(back.weights[3], minilm.weights[3])


def test_public_api():
    for name in ["AttentionData", "from_weights", "plot_head", "plot_heads", "save_png",
                 "to_bertviz", "PALETTE", "value_range"]:
        assert callable(getattr(viz, name)) or name == "PALETTE", name
    assert viz.PALETTE is terminal.PALETTE
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        viz.nope  # noqa: B018


def test_html_shares_the_palette(toy):
    try:
        from selfattention.viz import html  # noqa: F401
    except ImportError:
        pytest.skip("selfattention.viz.html is not written yet")
    page = viz.render_html(toy)
    assert viz.write_html is html.write_html
    assert all(c.lower() in page.lower() for c in terminal.PALETTE)


@pytest.mark.subprocess
def test_importing_viz_does_not_import_matplotlib():
    code = ("import sys, selfattention.viz, selfattention.cli, selfattention.viz.png; "
            "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_from_weights_nested_list_and_no_tokens():
    d = viz.from_weights([[0.5, 0.5], [0.25, 0.75]], ["a", "b"])
    assert d.num_layers == 1 and d.weights[0].shape == (1, 2, 2)
    assert d.weights[0][0, 1, 1] == np.float32(0.75)
    with pytest.raises(ValueError, match="no tokens"):
        viz.from_weights(np.ones((1, 0, 0)), [])


# --- a fixed scale and masks --------------------------------------------------------------------


def _causal(data: AttentionData) -> AttentionData:
    """The toy data with a causal mask and the weights it would give (rows renormalized over j ≤ i)."""
    T = len(data.tokens)
    tril = np.tri(T, dtype=bool)
    W = np.where(tril, data.weights[0], 0.0)
    W = (W / W.sum(-1, keepdims=True)).astype(np.float32)
    out = viz.from_weights([W], data.tokens, title="causal")
    out.allowed = [tril]
    return out


def test_vmax_fixes_the_scale_and_the_colour_bar_says_which(toy):
    ax = png.plot_head(toy, 1, 1)
    label = ax.figure.axes[-1].get_ylabel()
    hi = float(toy.weights[0][0].max())
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0.0, pytest.approx(hi))
    assert f"0 to the max shown, {hi:.3g}" in label
    ax = png.plot_head(toy, 1, 1, vmax=1)
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0.0, 1.0)
    assert "fixed, 0 to 1" in ax.figure.axes[-1].get_ylabel()
    fig = png.plot_heads(toy, 1, vmax=1)
    assert {(im.norm.vmin, im.norm.vmax) for ax in fig.axes for im in ax.images} == {(0.0, 1.0)}
    with pytest.raises(ValueError, match="vmax must be a number > 0"):
        png.save_png(toy, "never.png", vmax=0)
    assert not Path("never.png").exists()


def test_masked_cells_are_grey_and_named(tmp_path, toy):
    data = _causal(toy)
    T = len(data.tokens)
    ax = png.plot_head(data, 1, 1)
    shown = ax.images[0].get_array()
    assert np.ma.isMaskedArray(shown) and np.array_equal(np.ma.getmaskarray(shown), ~np.tri(T, dtype=bool))
    assert ax.images[0].cmap.get_bad()[:3] == pytest.approx(tuple(rgb(png.MASKED)))
    texts = [t.get_text() for leg in ax.figure.legends for t in leg.get_texts()]
    assert texts == ["masked: the score is −∞ before the softmax, so α = 0"]
    img = read_png(png.save_png(data, tmp_path / "c.png", dpi=60))
    assert (np.abs(img - rgb(png.MASKED)).max(-1) < 2 / 255).sum() > 1000  # the grey triangle is drawn
    grid = png.plot_heads(data, 1)
    assert [t.get_text() for leg in grid.legends for t in leg.get_texts()] == texts
    assert png.plot_head(toy, 1, 1).figure.legends == []  # nothing masked: no legend


def test_cli_png_vmax_and_causal(tmp_path):
    from conftest import run_cli

    path = tmp_path / "c.png"
    rc, out, err = run_cli("explain", SENTENCE, "--model", "toy", "--causal", "--png", str(path),
                           "--vmax", "1")
    assert (rc, err) == (0, "") and "causal mask" in out
    img = read_png(path)
    assert (np.abs(img - rgb(png.MASKED)).max(-1) < 2 / 255).sum() > 1000
