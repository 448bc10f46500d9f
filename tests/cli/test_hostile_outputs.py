"""Hostile input, third round (issue 17), for every command but train's own: outputs that would
destroy what the command reads, a stdout that cannot be written, numbers in other scripts. Each
case ends in a correct result or one clear line (exit 2; 141, quietly, for a broken pipe) with
nothing lost.

1. outputs (--out, --png, --html, stdout with --json or without) never destroy a file the command
   reads — a model's files, a run's checkpoints and metrics, the text read — through symlinks,
   ``..`` or hard links; ``_io.read_by_command`` is the one check;
2. a stdout that fails (full, an I/O error, closed, a reader gone) is said in one line, or ends
   quietly for a broken pipe, whatever the command;
3. numeric options take the digits 0-9 only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import one_error, run_cli

from selfattention import _io
from selfattention.cli import build_parser, main
from selfattention.models.pretrained import default_model_path

EXE = Path(sys.executable).with_name("selfattention")
CMD = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "selfattention"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
run = run_cli




def process(args: list[str], stdout=subprocess.PIPE, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *args], stdout=stdout, stderr=subprocess.PIPE, timeout=300, env=ENV, **kw)


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` (links followed): (inode, size, mtime) — what a write would change."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


# --- 1. outputs never destroy what the command reads --------------------------------------------


def test_read_by_command_same_file_folder_and_links(tmp_path):
    """The one check every output goes through: the same file by any name, or anything in a folder
    read (links out of it included); a file next to what is read is not refused."""
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "weights.bin"
    weights.write_bytes(b"w")
    text = tmp_path / "text.txt"
    text.write_text("t")
    (tmp_path / "link.txt").symlink_to(text)
    (tmp_path / "sub").mkdir()
    os.link(text, tmp_path / "hard.txt")
    (tmp_path / "model-link").symlink_to(model)
    elsewhere = tmp_path / "real-weights.bin"  # a model folder of links to the real files
    elsewhere.write_bytes(b"r")
    (model / "linked.bin").symlink_to(elsewhere)
    (model / "dangling.bin").symlink_to(tmp_path / "not-yet.bin")
    read = [str(model), str(text)]
    for out, hit in [
        (text, text), (tmp_path / "link.txt", text), (tmp_path / "sub" / ".." / "text.txt", text),
        (tmp_path / "hard.txt", text), (weights, model), (model / "new.npy", model),
        (tmp_path / "model-link" / "weights.bin", model), (model / "a" / ".." / "b.npy", model),
        (elsewhere, model), (tmp_path / "not-yet.bin", model), (model, model),
    ]:
        assert _io.read_by_command(out, read) == str(hit), out
    for out in (tmp_path / "next-to-it.txt", tmp_path / "text.txt.bak", tmp_path / "model2" / "x",
                tmp_path / "modelx.npy", tmp_path / "sub" / "text.txt"):
        assert _io.read_by_command(out, read) is None, out
    assert _io.read_by_command(text, []) is None


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory) -> Path:
    """A real copy of the default model: a write that got through would destroy this, not the package."""
    dst = tmp_path_factory.mktemp("real") / "model"
    shutil.copytree(default_model_path(), dst)
    return dst


@pytest.fixture()
def linked_model(tmp_path, model_copy) -> Path:
    """A model folder of symlinks to the real files (as tests and users make them)."""
    d = tmp_path / "model"
    d.mkdir()
    for entry in model_copy.iterdir():
        (d / entry.name).symlink_to(entry)
    return d


def test_embed_never_writes_over_the_model(tmp_path, model_copy, linked_model):
    before = snapshot(model_copy)
    for out in (linked_model / "model.safetensors", model_copy / "model.safetensors",
                linked_model / "1_Pooling" / "config.json", tmp_path / "x" / ".." / "model" / "vocab.txt",
                linked_model / "new.npy"):
        one_error(*run("embed", "a sentence", "--model", str(linked_model), "--out", str(out)),
                  r"--out .* would (write into|overwrite) --model .*model, which this command reads")
    assert snapshot(model_copy) == before and (linked_model / "model.safetensors").is_symlink()
    rc, out, err = run("embed", "a sentence", "--model", str(linked_model), "--out", str(tmp_path / "e.npy"))
    assert rc == 0, err  # next to the model: written
    assert np.load(tmp_path / "e.npy").shape == (1, 384)


def test_the_default_model_is_read_too(tmp_path, model_copy, monkeypatch):
    """minilm's files, wherever the package keeps them (here a copy stands in for the package's
    folder: a write that got through would destroy the copy, not the installation)."""
    from selfattention.models import pretrained

    monkeypatch.setattr(pretrained, "default_model_path", lambda: model_copy)
    before = snapshot(model_copy)
    link = tmp_path / "pkg"
    link.symlink_to(model_copy)
    for argv in (["embed", "a", "--out", str(link / "model.safetensors")],
                 ["explain", "a b", "--png", str(link / "config.json")],
                 ["explain", "a b", "--html", str(link / "sub" / ".." / "tokenizer.json")]):
        one_error(*run(*argv), r"would (write into|overwrite) the model all-MiniLM-L6-v2")
    assert snapshot(model_copy) == before


@pytest.mark.subprocess
def test_embed_never_writes_over_the_text_it_reads(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\nworld\n")
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.txt")
    (tmp_path / "link.txt").symlink_to(src)
    for out in (src, tmp_path / "sub" / ".." / "in.txt", tmp_path / "hard.txt", tmp_path / "link.txt"):
        one_error(*run("embed", "--file", str(src), "--out", str(out)),
                  r"--out .* would overwrite --file .*in\.txt, which this command reads; give another name")
    assert src.read_text() == "hello\nworld\n"
    with open(src, "rb") as stdin:  # --file - reading a file through stdin
        p = process(["embed", "--file", "-", "--out", str(tmp_path / "link.txt")], stdin=stdin)
    assert p.returncode == 2 and b"would overwrite stdin (read from " in p.stderr, p.stderr
    assert src.read_text() == "hello\nworld\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny trained run: two checkpoints, metrics."""
    out = tmp_path_factory.mktemp("runs") / "run"
    tiny = ["--d-model", "16", "--d-ff", "32", "--heads", "2", "--layers", "1", "--max-len", "6",
            "--longer-len", "8", "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "2",
            "--no-progress", "--no-pictures", "--threads", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "reverse", "--steps", "4", "--out", str(out), *tiny]) == 0
    return out


def test_explain_never_writes_over_a_run(tmp_path, trained_run):
    """A run's checkpoints, metrics, anything in it: by --png or --html, from --model RUN or from one
    of its checkpoints, by name, through '..' or a symlink."""
    run_ = trained_run
    newest = sorted((run_ / "checkpoints").iterdir())[-1]
    link = tmp_path / "run-link"
    link.symlink_to(run_)
    before = snapshot(run_)
    cases = [
        ([str(run_)], "--html", newest / "state.json"),
        ([str(run_)], "--png", newest / "model.safetensors"),
        ([str(run_)], "--png", run_ / "metrics.jsonl"),
        ([str(run_)], "--html", link / "checkpoints" / ".." / "metrics.jsonl"),
        ([str(link)], "--png", run_ / "attention.png"),
        ([str(newest)], "--png", run_ / "metrics.jsonl"),  # a checkpoint: its run is read with it
        ([str(newest)], "--html", sorted((run_ / "checkpoints").iterdir())[0] / "state.json"),
    ]
    for model, opt, out in cases:
        one_error(*run("explain", "ab=", "--model", *model, opt, str(out)),
                  rf"{opt} .* would write into (--model|the run of --model) .*, which this command reads")
    assert snapshot(run_) == before
    rc, out, err = run("explain", "ab=", "--model", str(run_), "--png", str(tmp_path / "a.png"))
    assert rc == 0 and (tmp_path / "a.png").stat().st_size > 0, err  # outside the run: written


@pytest.mark.subprocess
def test_png_and_html_and_stdout_are_never_one_file(tmp_path):
    (tmp_path / "sub").mkdir()
    one_error(*run("explain", "a b", "--model", "toy", "--png", str(tmp_path / "x"),
                   "--html", str(tmp_path / "sub" / ".." / "x")), r"are the same file; give two names")
    (tmp_path / "l").symlink_to(tmp_path / "y")
    one_error(*run("explain", "a b", "--model", "toy", "--png", str(tmp_path / "y"),
                   "--html", str(tmp_path / "l")), r"are the same file")
    with open(tmp_path / "y", "wb") as stdout:
        p = process(["explain", "a b", "--model", "toy", "--png", str(tmp_path / "l")], stdout=stdout)
    assert p.returncode == 2 and b"stdout (redirected to " in p.stderr and b"the same file" in p.stderr


@pytest.mark.subprocess
def test_stdout_redirected_into_what_is_read_is_refused(tmp_path, trained_run):
    """--json (or any printed result) to a file the command reads: with `>>` nothing is lost."""
    metrics = trained_run / "metrics.jsonl"
    before = metrics.read_bytes()
    newest = sorted((trained_run / "checkpoints").iterdir())[-1]
    for model in (trained_run, newest):
        with open(metrics, "ab") as stdout:  # `>> RUN/metrics.jsonl`
            p = process(["explain", "ab=", "--model", str(model), "--json"], stdout=stdout)
        assert p.returncode == 2 and p.stderr.count(b"\n") == 1, p.stderr
        assert re.search(rb"stdout \(redirected to .*metrics\.jsonl\) would write into .*; redirect it "
                         rb"elsewhere", p.stderr), p.stderr
    assert metrics.read_bytes() == before
    text = tmp_path / "in.txt"
    text.write_text("one\ntwo\n")
    with open(text, "ab") as stdout:
        p = process(["embed", "--file", str(text), "--json"], stdout=stdout)
    assert p.returncode == 2 and b"would overwrite --file" in p.stderr and text.read_text() == "one\ntwo\n"
    with open(text, "rb") as stdin, open(text, "ab") as stdout:  # the quiz's answers
        p = process(["explain", "I am", "--quiz"], stdin=stdin, stdout=stdout)
    assert p.returncode == 2 and b"would overwrite stdin" in p.stderr and text.read_text() == "one\ntwo\n"


# --- 2. a stdout that fails ---------------------------------------------------------------------


class FailingStdout(io.StringIO):
    """A stdout whose writes fail with ``error`` once ``room`` characters are taken."""

    def __init__(self, error: OSError, room: int = 0):
        super().__init__()
        self.error, self.room = error, room

    def write(self, s: str) -> int:
        if self.tell() + len(s) > self.room:
            raise self.error
        return super().write(s)


def run_failing(error: OSError, *argv: str, room: int = 0) -> tuple[int, str]:
    """(exit status, stderr less bench's progress lines) of ``argv`` with a stdout that fails."""
    err = io.StringIO()
    with contextlib.redirect_stdout(FailingStdout(error, room)), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, "".join(line for line in err.getvalue().splitlines(True) if not line.startswith("bench: T="))


COMMANDS = [
    ["explain", "I am here", "--model", "toy"],
    ["explain", "I am here", "--model", "toy", "--json"],
    ["explain", "I am here", "--model", "toy", "--multihead"],
    ["explain", "I am here", "--quiz", "--answers", "1,2,3"],
    ["embed", "a sentence"],
    ["embed", "a sentence", "--json"],
    ["similarity", "a", "b"],
    ["bench", "--sizes", "4", "--rounds", "1", "--budget", "0", "--loop-max-t", "0", "--device", "cpu"],
    ["--help"],
    ["explain", "--help"],
    ["--version"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:3]))
@pytest.mark.parametrize("error, cause", [(OSError(errno.ENOSPC, "No space left on device"), "No space left"),
                                          (OSError(errno.EIO, "Input/output error"), "Input/output error")])
def test_a_failing_stdout_is_one_line_naming_it_in_every_command(argv, error, cause):
    rc, err = run_failing(error, *argv)
    assert rc == 2 and err.count("\n") == 1, err
    assert re.fullmatch(rf"selfattention: error: cannot write to stdout: {cause}[^\n]*\n", err), err


@pytest.mark.parametrize("argv", COMMANDS[:8], ids=lambda a: " ".join(a[:3]))
def test_a_broken_pipe_ends_quietly_in_every_command(argv):
    assert run_failing(BrokenPipeError(errno.EPIPE, "Broken pipe"), *argv, room=2) == (141, "")


def test_a_failing_stdout_leaves_no_half_file(tmp_path):
    out = tmp_path / "e.npy"
    out.write_bytes(b"old")
    rc, err = run_failing(OSError(errno.ENOSPC, "No space left on device"), "embed", "a", "b", "--json",
                          "--out", str(out), room=20)
    assert rc == 2 and "cannot write to stdout" in err
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]


@pytest.mark.subprocess
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("argv", [["explain", "I am here", "--model", "toy"], ["--help"]])
def test_stdout_on_a_full_device(argv):
    with open("/dev/full", "wb") as full:
        p = process(argv, stdout=full)
    assert p.returncode == 2, p.stderr
    assert p.stderr.decode() == ("selfattention: error: cannot write to stdout (/dev/full): No space left on "
                                 "device\n")


@pytest.mark.subprocess
def test_a_reader_that_went_away():
    """`selfattention explain … | head`: however much is printed, no message and 141, as `yes | head`;
    the same for a picture written through to the pipe (--png /dev/stdout)."""
    for argv in (["explain", "I am enjoying this lecture", "--model", "toy", "--wide"],
                 ["explain", "I am here", "--model", "toy", "--json"],
                 ["explain", "I am here", "--model", "toy", "--png", "/dev/stdout"]):
        r, w = os.pipe()
        os.close(r)
        try:
            p = process(argv, stdout=w)
        finally:
            os.close(w)
        assert (p.returncode, p.stderr) == (141, b""), p.stderr


@pytest.mark.subprocess
def test_a_closed_stdout_is_refused_before_any_work(tmp_path):
    png = tmp_path / "a.png"
    p = process(["explain", "I am here", "--model", "toy", "--png", str(png)], preexec_fn=lambda: os.close(1))
    assert p.returncode == 2 and b"stdout is closed" in p.stderr and p.stderr.count(b"\n") == 1, p.stderr
    assert not png.exists()


# --- 3. numbers: the digits 0-9 only -------------------------------------------------------------


@pytest.mark.parametrize("value", ["４", "٣", "1_6", "²", "0x10", "१६", "1e3"])
@pytest.mark.parametrize("argv", [
    ["bench", "--sizes", "{}"], ["bench", "--sizes", "16,{}"], ["bench", "--dim", "{}"],
    ["bench", "--batch", "{}"], ["bench", "--rounds", "{}"], ["bench", "--loop-max-t", "{}"],
    ["embed", "a", "--batch-size", "{}"], ["explain", "a", "--layer", "{}"], ["explain", "a", "--head", "{}"],
    ["explain", "a", "--model", "toy", "--dim", "{}"], ["explain", "a", "--model", "toy", "--seed", "{}"],
], ids=lambda a: " ".join(a[:3]))
def test_integers_in_other_scripts_or_with_underscores_are_refused(argv, value):
    one_error(*run(*[a.replace("{}", value) for a in argv]),
              r"argument --[a-z/-]+: expected .*(digits 0-9|integer)")


@pytest.mark.parametrize("argv", [["bench", "--target", "{}"], ["bench", "--budget", "{}"],
                                  ["explain", "a", "--vmax", "{}"]], ids=lambda a: " ".join(a[:3]))
@pytest.mark.parametrize("value", ["٠.5", "0.５", "1_0", "nan", "inf", "infinity", "1e999", " 1"])
def test_fractions_in_other_scripts_or_not_finite_are_refused(argv, value):
    one_error(*run(*[a.replace("{}", value) for a in argv]), r"argument --[a-z]+: (expected|must be)")


def test_ascii_numbers_are_still_taken():
    p = build_parser()
    a = p.parse_args(["bench", "--sizes", "16, 64,+256", "--dim", "8", "--target", "0.25", "--budget", "1e1"])
    assert (a.sizes, a.dim, a.target, a.budget) == ([16, 64, 256], 8, 0.25, 10.0)
    a = p.parse_args(["explain", "x", "--layer", "2", "--seed", "0", "--vmax", ".5"])
    assert (a.layer, a.seed, a.vmax) == (2, 0, 0.5)
