"""explain's table of views (``explain.views``) and its one Selection (``explain.selection``).

The table is checked against the command's own parser (every option a row names exists, so no
refusal is silently dead), its refusals are checked as the command reports them, and a view added
as one row works end to end. The Selection is checked against what each view reports.
"""

from __future__ import annotations

import argparse
import inspect
import json

import numpy as np
import pytest
from _cli import run_cli

from selfattention.cli import build_parser
from selfattention.errors import OptionError, UsageError
from selfattention.explain import views
from selfattention.explain.selection import select
from selfattention.explain.views import VIEWS, WALK, View, chosen
from selfattention.models import ToyModel, load, trace

SENTENCE = "I am enjoying this lecture"
TOY = ["--model", "toy"]


def _explain_options() -> set[str]:
    """The dests of ``selfattention explain``'s options, from the parser itself."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices["explain"]._actions}


def test_every_row_is_one_kind_and_names_functions_that_exist():
    for view in (WALK, *VIEWS):
        kinds = [view.build is not None and view.render is not None, view.write is not None,
                 view.command is not None]
        assert kinds.count(True) == 1, view.name
        for ref in (view.build, view.render, view.write, view.command):
            if ref is not None:
                assert callable(views.function(ref)), ref
    for view in (WALK, *(v for v in VIEWS if v.build)):  # every step renders alike
        params = inspect.signature(views.function(view.render)).parameters
        assert {"width", "wide", "color", "vmax"} <= set(params), view.name


def test_every_option_a_row_names_is_an_option_of_explain():
    options = _explain_options()
    for view in VIEWS:
        named = {view.name, *(o for o, _ in view.refuses), *(o for o, _ in view.needs)}
        assert named <= options, (view.name, named - options)


@pytest.mark.parametrize("given, message", [
    ({"multihead", "permute"}, "--multihead and --permute: give one of them"),
    ({"quiz", "multihead"}, "--multihead and --quiz: give one of them"),
    ({"multihead", "head"}, "--multihead shows every head of the layer; drop --head"),
    ({"permute", "causal"}, "--permute compares every head, without a mask; drop --causal"),
    ({"permute", "html"}, "--permute prints a comparison of two orders; draw pictures without it"),
    ({"quiz", "all_heads", "png"}, "--quiz asks its own questions; drop --png"),
    ({"quiz", "no_truncate"}, "--quiz asks its own questions; drop --no-truncate"),
    ({"answers"}, "--answers goes with --quiz"),
    ({"all_heads", "html"}, "--all-heads applies to --png (the HTML explorer always has every head)"),
])
def test_refusals_come_from_the_table(given, message):
    with pytest.raises(UsageError) as e:
        chosen(given)
    assert str(e.value) == message


def test_what_the_options_choose():
    by_name = {v.name: v for v in VIEWS}
    assert chosen({"json", "causal"}) == (WALK, ())
    pictures = (by_name["png"], by_name["html"])
    assert chosen({"multihead", "png", "html", "json"}) == (by_name["multihead"], pictures)
    assert chosen({"quiz", "answers", "word"}) == (by_name["quiz"], ())


def test_a_new_view_is_one_row(monkeypatch):
    """A row naming a build and a render is an option of the command, shown like the others: here
    the walk-through again under another name, which must print what --model toy prints."""
    again = View("again", help="the walk-through, again", build="walk:build_report", render="text:render",
                 refuses=(("head", "--again refuses --head"),), verify=True)
    monkeypatch.setattr(views, "VIEWS", (*VIEWS, again))
    assert "again" in _explain_options()
    rc, want, _ = run_cli("explain", SENTENCE, *TOY, "--no-color")
    rc2, got, err = run_cli("explain", SENTENCE, *TOY, "--no-color", "--again")
    assert rc == rc2 == 0 and got == want, err
    rc, out, err = run_cli("explain", SENTENCE, *TOY, "--again", "--head", "1")
    assert rc == 2 and out == "" and err == "selfattention: error: --again refuses --head\n"
    rc, _, err = run_cli("explain", SENTENCE, *TOY, "--again", "--multihead")
    assert rc == 2 and "--multihead and --again: give one of them" in err


# --- the Selection --------------------------------------------------------------------------------


def test_the_toy_model_defaults():
    t = trace(ToyModel(dim=8), "the cat sat", backends=())
    s = select(t)
    assert (s.layer, s.head, s.word) == (0, 0, 0) and not s.head_given
    assert s.head_why == "the layer's only head" and s.word_why == "the first real word"
    s = select(t, word="3")
    assert s.word == 2 and s.word_why == "--word"
    with pytest.raises(OptionError, match="the toy model has one layer and one head"):
        select(t, head=2)
    with pytest.raises(UsageError, match="is not in the sentence"):
        select(t, word="dog")


def test_minilm_defaults_given_and_causal():
    model = load("minilm")
    t = trace(model, SENTENCE, layers=[0, 2])
    s = select(t)
    w = t.layers[0].weights.numpy()  # (H, T, T); the default head mixes the most real word pieces
    real = np.array([not x for x in t.tokens.special])
    rows = w[:, real][:, :, real]
    p = rows / rows.sum(-1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)  # (H, T'): written here, not the package's
    score = (rows.sum(-1) * np.exp(entropy)).mean(-1)
    assert (s.layer, s.head, s.word) == (0, int(np.argmax(score)), 1)
    assert s.head_why.startswith("the one of this layer mixing the most real word pieces")
    s = select(t, layer=3, head=5, word="lecture")
    assert (s.layer, s.head, s.word, s.head_given) == (2, 4, 5, True)
    with pytest.raises(ValueError, match="not layer 2"):
        select(t, layer=2)
    causal = trace(model, SENTENCE, layers=[0], causal=True)
    assert select(causal).word == 3  # real word pieces 1…5: the middle one, "enjoying"


@pytest.mark.slow
def test_every_view_reads_the_one_selection(tmp_path):
    """The walk-through, --multihead, --json and --html agree on layer, head and word, whichever way
    each was chosen."""
    for argv in ([], ["--layer", "2", "--word", "this"], ["--head", "7", "--causal"]):
        rc, out, _ = run_cli("explain", SENTENCE, "--json", *argv)
        walk = json.loads(out)
        rc2, out, _ = run_cli("explain", SENTENCE, "--json", "--multihead", *[a for a in argv if a != "--head"
                                                                              and a != "7"])
        heads = json.loads(out)
        html = tmp_path / "e.html"
        rc3, out, _ = run_cli("explain", SENTENCE, "--html", str(html), *argv)
        assert rc == rc2 == rc3 == 0
        assert heads["layer"] == walk["layer"] and heads["word"]["index"] == walk["derivation"]["index"]
        assert out.rstrip().endswith(f"it opens on layer {walk['layer']}, head {walk['head']}, word piece "
                                     f"{walk['derivation']['index']}")
