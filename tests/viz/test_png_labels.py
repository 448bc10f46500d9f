"""The PNG's text as a reader sees it: inside the figure, upright single characters, the model's unit,
and a per-head colour scale for a grid whose heads differ in range.

Figures are drawn with matplotlib's own renderer and measured there: ``Figure.get_tightbbox`` is the
box around everything drawn (titles, tick labels, the colour bar's label, the mask legend); a text
that leaves the figure is clipped in the PNG.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from selfattention import viz
from selfattention.viz import png, terminal
from selfattention.viz.data import AttentionData

REVERSE = list("abcdefghijklmnop=ponmlkjihgfedcba.")  # a trained reverse model's 34 characters
HELLO = list("hello=olleh.")
MINILM = ["[CLS]", "i", "am", "enjoying", "this", "lecture", "[SEP]"]


def weights(T: int, H: int, seed: int, causal: bool) -> np.ndarray:
    """(H, T, T) softmax rows of random scores, causal ones zero above the diagonal."""
    rng = np.random.default_rng(seed)
    e = 2 * rng.standard_normal((H, T, T))
    if causal:
        e = np.where(np.tril(np.ones((T, T), bool)), e, -np.inf)
    a = np.exp(e - e.max(-1, keepdims=True))
    return (a / a.sum(-1, keepdims=True)).astype(np.float32)


def data(tokens: list[str], H: int = 4, *, causal: bool = False, unit: str = "characters",
         seed: int = 0) -> AttentionData:
    T = len(tokens)
    d = viz.from_weights(weights(T, H, seed, causal), tokens,
                         title="toy model, D = 64, random untrained W's (seed 0)")
    d.unit = unit
    if causal:
        d.allowed = [np.tril(np.ones((T, T), bool))]
    return d


def assert_inside(fig: Figure) -> None:
    """Everything drawn lies inside the figure (to the pixel at 100 dpi): nothing is clipped."""
    fig.set_dpi(100)
    fig.draw_without_rendering()  # the layout and every text's extent, without rasterizing the pixels
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    w, h = fig.get_size_inches()
    px = 1 / 100
    assert box.x0 >= -px and box.y0 >= -px and box.x1 <= w + px and box.y1 <= h + px, (
        f"drawn area {box.bounds} leaves the {w:.2f} × {h:.2f} in figure")


SLOW = pytest.mark.slow  # grids of 4 or 12 heads: 2-3 s of matplotlib's layout each
CASES = [  # (tokens, heads, causal, unit): characters of trained runs, MiniLM's word pieces, edge sizes
    pytest.param(HELLO, 4, True, "characters", marks=SLOW),
    pytest.param(REVERSE, 4, True, "characters", marks=SLOW),
    pytest.param(list("ab"), 12, False, "characters", marks=SLOW),
    pytest.param(MINILM, 12, False, "word pieces", marks=SLOW), (["x"], 1, False, "words"),
    ([f"representation{i}" for i in range(9)], 2, False, "words"),
]


@pytest.mark.parametrize("tokens, H, causal, unit", CASES)
def test_every_text_lies_inside_the_figure(tokens, H, causal, unit):
    d = data(tokens, H, causal=causal, unit=unit)
    assert_inside(png.plot_head(d, 1, H).figure)
    assert_inside(png.plot_heads(d, 1))
    assert_inside(png.plot_heads(d, 1, scale="per-head"))


@pytest.mark.parametrize("tokens", [HELLO, pytest.param(REVERSE, marks=SLOW),
                                    ["[CLS]", "l", "=", "lecture", "[SEP]"]])
def test_one_character_labels_are_never_rotated(tokens):
    d = data(tokens, 2, causal=True)
    for ax in (png.plot_head(d, 1, 1), png.plot_heads(d, 1).axes[0]):
        ax.figure.canvas.draw()
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert labels
        for t in labels:
            if len(t.get_text()) == 1:  # a tilted "l" reads as "\", a tilted "=" as "//"
                assert t.get_rotation() == 0, t.get_text()
            else:
                assert t.get_rotation() in (45, 90), t.get_text()


@pytest.mark.slow
def test_titles_use_the_models_unit():
    d = data(REVERSE * 3, 4, causal=False)  # 102 characters: only every k-th one is labelled
    grid = png.plot_heads(d, 1)
    title = grid.texts[0].get_text()
    assert "the character attending" in title and "the character attended to" in title
    assert "word" not in title and re.search(r"every \d+(nd|rd|th) character labelled, 102 in all", title)
    ax = png.plot_head(d, 1, 1)
    assert any("character labelled" in t.get_text() for t in ax.texts)
    pieces = png.plot_heads(data(MINILM, 12, unit="word pieces"), 1)
    assert "the word piece attending" in pieces.texts[0].get_text()


def outlier_layer(T: int = 8, H: int = 6) -> AttentionData:
    """Head 1 looks at one position (weights 0 or 1); heads 2…H spread theirs (every weight ≤ 0.35)."""
    rng = np.random.default_rng(3)
    W = 0.6 + 0.4 * rng.random((H, T, T))
    W /= W.sum(-1, keepdims=True)
    W[0] = np.eye(T)[np.zeros(T, int)]  # every row on position 1
    return viz.from_weights(W.astype(np.float32), [f"w{i}" for i in range(T)])


def brightest(ax) -> np.ndarray:
    """The RGB the head's largest weight is drawn in."""
    im = ax.images[0]
    A = np.asarray(im.get_array())
    return np.asarray(im.cmap(im.norm(A.max()))[:3])


@pytest.mark.slow
def test_a_per_head_scale_keeps_an_outlier_head_from_flattening_the_others():
    d = outlier_layer()
    W = d.weights[0]
    top = np.array(terminal.hex_to_rgb(terminal.PALETTE[-1])) / 255
    shared = [ax for ax in png.plot_heads(d, 1).axes if ax.images]
    assert not np.allclose(brightest(shared[1]), top, atol=0.02)  # head 2's largest weight: dim
    own = png.plot_heads(d, 1, scale="per-head")
    maps = [ax for ax in own.axes if ax.images]
    for h, ax in enumerate(maps):
        assert ax.images[0].norm.vmax == pytest.approx(float(W[h].max()))
        np.testing.assert_allclose(brightest(ax), top, atol=1e-9)  # each head reaches the top colour
        assert ax.get_title() == f"head {h + 1} (max {float(W[h].max()):.3g})"
    bar = own.axes[-1]  # the colour bar's, added last
    assert "each head its own scale" in bar.get_ylabel()


@pytest.mark.slow
def test_a_per_head_scale_is_checked_before_anything_is_written(tmp_path):
    d = outlier_layer()
    with pytest.raises(ValueError, match="scale must be one of 'shared', 'per-head', got 'each'"):
        png.save_png(d, tmp_path / "a.png", all_heads=True, scale="each")
    with pytest.raises(ValueError, match="vmax fixes one scale for every head"):
        png.save_png(d, tmp_path / "a.png", all_heads=True, scale="per-head", vmax=1)
    assert list(tmp_path.iterdir()) == []
    assert png.save_png(d, tmp_path / "a.png", all_heads=True, scale="per-head", dpi=30).is_file()


# --------------------------------------------------------------------------- explain --scale


@pytest.mark.slow
def test_explain_draws_each_head_on_its_own_scale(tmp_path, capsys, monkeypatch):
    from selfattention.cli import main

    drawn = {}
    real = png.plot_heads

    def keep(*args, **kwargs):  # the figure explain saves, to read its scales back
        drawn["fig"] = real(*args, **kwargs)
        return drawn["fig"]

    monkeypatch.setattr(png, "plot_heads", keep)
    path = tmp_path / "heads.png"
    assert main(["explain", "I am enjoying this lecture", "--png", str(path), "--all-heads",
                 "--scale", "per-head"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("7 word pieces, each head on its own colour scale")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = [ax for ax in drawn["fig"].axes if ax.images]
    tops = [ax.images[0].norm.vmax for ax in maps]
    assert len(maps) == 12 and tops == [float(np.asarray(ax.images[0].get_array()).max()) for ax in maps]
    assert len(set(tops)) > 1  # MiniLM's layer-1 heads differ in range: one scale each


@pytest.mark.parametrize("argv, message", [
    (["--scale", "per-head"], "--scale applies to --png --all-heads"),
    (["--png", "{p}", "--scale", "per-head"], "--scale chooses the colour scales of a grid of heads"),
    (["--png", "{p}", "--all-heads", "--scale", "per-head", "--vmax", "1"], "--vmax fixes one scale"),
    (["--quiz", "--scale", "shared"], "--scale applies to --png --all-heads"),
])
def test_explain_refuses_a_scale_that_does_not_apply(tmp_path, capsys, argv, message):
    from selfattention.cli import main

    path = tmp_path / "x.png"
    code = main(["explain", "I am enjoying this lecture", *(a.format(p=path) for a in argv)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
