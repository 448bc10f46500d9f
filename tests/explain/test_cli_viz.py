"""`selfattention explain TEXT --png FILE [--all-heads]` and `--html FILE`, from the outside.

The files are read back (a valid PNG of the right kind of size; an HTML page), what is printed is
one line per file, and every mistake is one stderr line, exit 2, and no file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from selfattention.cli import main

SENTENCE = "I am enjoying this lecture"
TOY = ["--model", "toy"]


def html_missing() -> bool:
    try:
        import selfattention.viz.html  # noqa: F401
    except ImportError:
        return True
    return False


needs_html = pytest.mark.skipif(html_missing(), reason="selfattention.viz.html (another change) is not "
                                                       "importable yet")


def explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def png_shape(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.std() > 0.1  # not blank
    return img.shape[:2]


def test_png_default_layer_and_head_are_explains(tmp_path, capsys):
    code, out, err = explain(capsys, SENTENCE, "--json")
    assert code == 0
    report = json.loads(out)
    path = tmp_path / "a.png"
    code, out, err = explain(capsys, SENTENCE, "--png", str(path))
    assert (code, err) == (0, "")
    assert out == (f"wrote {path}: layer {report['layer']}, head {report['head']} (default: the head mixing "
                   "the most word pieces) of all-MiniLM-L6-v2, 7 word pieces\n")
    h, w = png_shape(path)
    assert 500 < h < 2000 and 500 < w < 2000
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_png_all_heads_and_chosen_layer(tmp_path, capsys):
    one, grid = tmp_path / "one.png", tmp_path / "grid.png"
    assert explain(capsys, SENTENCE, "--png", str(one), "--layer", "3", "--head", "2")[0] == 0
    code, out, _ = explain(capsys, SENTENCE, "--png", str(grid), "--layer", "3", "--all-heads")
    assert code == 0
    assert out == f"wrote {grid}: layer 3, all 12 heads of all-MiniLM-L6-v2, 7 word pieces\n"
    (h1, w1), (h2, w2) = png_shape(one), png_shape(grid)
    assert h2 > h1 and w2 > w1


def test_png_toy(tmp_path, capsys):
    path = tmp_path / "toy.png"
    code, out, err = explain(capsys, SENTENCE, *TOY, "--seed", "3", "--dim", "16", "--png", str(path))
    assert (code, err) == (0, "")
    assert out == f"wrote {path}: layer 1, head 1 of the toy model (D = 16, seed 3), 5 words\n"
    png_shape(path)


def test_json_with_png_prints_only_the_json(tmp_path, capsys):
    path = tmp_path / "a.png"
    code, out, _ = explain(capsys, SENTENCE, *TOY, "--json", "--word", "am", "--png", str(path))
    assert code == 0 and json.loads(out)["derivation"]["word"] == "am"
    png_shape(path)


@pytest.mark.parametrize("argv, message", [
    (["--png", "{tmp}/nope/a.png"],
     "--png: cannot write {tmp}/nope/a.png: the folder {tmp}/nope does not exist"),
    (["--png", "{tmp}"], "--png: cannot write {tmp}: it is a directory"),
    (["--png", "{tmp}/f/a.png"], "is a file, not a folder"),
    (["--html", "{tmp}/nope/e.html"], "--html: cannot write {tmp}/nope/e.html"),
    (["--png", "{tmp}/a.png", "--layer", "9"], "layer 9 is out of range: all-MiniLM-L6-v2 has layers 1 to 6"),
    (["--png", "{tmp}/a.png", "--head", "13"], "head 13 is out of range"),
    (["--png", "{tmp}/a.png", "--model", "toy", "--head", "2"], "the toy model has one layer and one head"),
    (["--png", "{tmp}/a.png", "--all-heads", "--head", "2"], "give one of them"),
    (["--all-heads"], "--all-heads applies to --png"),
    (["--png", "{tmp}/a.png", "--word", "am"], "--word picks the walk-through's word"),
    (["--png", "{tmp}/x", "--html", "{tmp}/x"], "the same file"),
    (["--png", "{tmp}/a.png", "--dim", "8"], "applies only to the toy model"),
    (["--png", "{tmp}/a.png", "--model", "toy", "--no-truncate"], "--no-truncate applies to pretrained"),
    (["--png", "{tmp}/a.png", "--vmax", "0"], "--vmax: must be above 0"),
    (["--png", "{tmp}/a.png", "--vmax", "2"], "at most 1"),
    (["--json", "--vmax", "1"], "--vmax sets the colour scale of a picture"),
    (["--png", "{tmp}/a.png", "--permute"], "--permute prints a comparison"),
    (["--png", "{tmp}/a.png", "--quiz"], "--quiz asks its own questions"),
])
def test_mistakes_exit_2_one_line_no_file(tmp_path, capsys, argv, message):
    (tmp_path / "f").write_text("a file")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = explain(capsys, SENTENCE, *argv)
    assert code == 2 and out == ""
    assert err.startswith("selfattention: error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_text_exit_2(tmp_path, capsys, text):
    for model in (["--model", "toy"], []):
        code, _, err = explain(capsys, text, *model, "--png", str(tmp_path / "a.png"))
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_write_failure_is_exit_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, f, **kwargs):
        f.write(b"\x89PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    path = tmp_path / "a.png"
    code, out, err = explain(capsys, SENTENCE, *TOY, "--png", str(path))
    assert code == 2 and out == ""
    assert err == f"selfattention: error: --png {path}: cannot write it (No space left on device)\n"
    assert list(tmp_path.iterdir()) == []


def test_no_truncate_refuses_a_long_text(tmp_path, capsys):
    code, out, err = explain(capsys, "word " * 600, "--no-truncate", "--png", str(tmp_path / "a.png"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "602 word pieces, more than the model's 512 positions" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_truncated_text_warns_once(tmp_path, capsys):
    path = tmp_path / "long.png"
    code, out, err = explain(capsys, "word " * 600, "--png", str(path), "--all-heads")
    assert code == 0 and "512 word pieces" in out
    assert err.count("selfattention: warning:") == 1 and "dropped the last 90" in err
    png_shape(path)


@needs_html
def test_html(tmp_path, capsys):
    path = tmp_path / "e.html"
    code, out, err = explain(capsys, SENTENCE, "--html", str(path))
    assert (code, err) == (0, "")
    assert out == (f"wrote {path}: all 6 layers × 12 heads of all-MiniLM-L6-v2, 7 word pieces; it opens on "
                   "layer 1, head 4, word piece 2\n")
    page = path.read_text(encoding="utf-8")
    assert "<html" in page.lower() and "enjoying" in page


@needs_html
def test_html_opens_on_the_walk_throughs_layer_head_and_word(tmp_path, capsys):
    """The explorer's first view is the terminal's (and the PNG's) of the same run: layer, head, word."""
    import re

    for argv in ([], ["--layer", "3", "--word", "lecture"], ["--head", "7", "--word", "5"], ["--causal"]):
        code, out, _ = explain(capsys, SENTENCE, *argv, "--json")
        report = json.loads(out)
        path = tmp_path / "e.html"
        assert explain(capsys, SENTENCE, *argv, "--html", str(path))[0] == 0
        page = path.read_text(encoding="utf-8")
        data = json.loads(re.search(r'id="attention-data">(.*?)</script>', page, re.S).group(1))
        want = {"layer": report["layer"] - 1, "head": report["head"] - 1,
                "word": report["derivation"]["index"] - 1}
        assert data["initial"] == want, argv
        assert data["unit"] == "word pieces"
        assert (data["allowed"] is not None) == ("--causal" in argv)


@needs_html
def test_html_and_png_together_toy(tmp_path, capsys):
    page, pic = tmp_path / "e.html", tmp_path / "a.png"
    code, out, _ = explain(capsys, SENTENCE, *TOY, "--html", str(page), "--png", str(pic), "--all-heads")
    assert code == 0 and out.splitlines() == [
        f"wrote {pic}: layer 1, 1 head of the toy model (D = 64, seed 0), 5 words",
        f"wrote {page}: 1 layer × 1 head of the toy model (D = 64, seed 0), 5 words; it opens on layer 1, "
        "head 1, word 1"]
    assert page.stat().st_size > 0
    png_shape(pic)


@pytest.mark.subprocess
def test_console_script_error_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("selfattention")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "selfattention.cli"]
    r = subprocess.run([*cmd, "explain", SENTENCE, "--png", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("selfattention: error: --png: cannot write") and r.stderr.count("\n") == 1


def test_help_names_the_picture_options(capsys):
    assert main(["explain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--png FILE", "--all-heads", "--html FILE", "one line per file"):
        assert option in out
