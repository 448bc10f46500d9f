"""The argparse types every command shares (``selfattention._options``): the digits 0-9 only, a
range, one message per rule; one MAX_SEED."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from selfattention._options import MAX_SEED, integer, non_negative, number, positive, seed, sizes

SRC = Path(__file__).parents[2] / "src" / "selfattention"


def refused(parse, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(text)
    return str(e.value)


def test_integer_takes_a_range_in_ascii_digits():
    parse = integer(1, 10)
    assert [parse(s) for s in ("1", "10", "+7", "007")] == [1, 10, 7, 7]
    assert refused(parse, "0") == "must be between 1 and 10, got 0"
    assert refused(parse, "11") == "must be between 1 and 10, got 11"
    for bad in ("４", "٣", "1_0", "²", "0x10", "1e1", " 1", "", "one"):
        assert refused(parse, bad) == f"expected an integer written with the digits 0-9, got '{bad}'"
    assert refused(integer(0), "-1") == "must be at least 0, got -1"
    assert refused(parse, "9" * 5000) == "must be between 1 and 10, got a number of 5,000 digits"


def test_integer_with_what_is_expected():
    assert refused(positive, "0") == "expected a positive integer, got 0"
    assert refused(positive, "١٠") == "expected a positive integer, got '١٠'"
    assert refused(non_negative, "-3") == "expected an integer ≥ 0, got -3"
    assert seed(str(MAX_SEED)) == MAX_SEED == 2**63 - 1
    assert refused(seed, str(MAX_SEED + 1)) == ("expected an integer in 0 … 2**63-1 (9223372036854775807), "
                                               f"got {MAX_SEED + 1}")


def test_number_takes_finite_decimals_in_a_range():
    parse = number(0.0, 1.0, above=True, expected="a number such as 1", rule="must be above 0 and at most 1")
    assert [parse(s) for s in ("1", ".5", "1e-3", "+0.25")] == [1.0, 0.5, 0.001, 0.25]
    assert refused(parse, "0") == "must be above 0 and at most 1, got 0"
    assert refused(parse, "1.0001") == "must be above 0 and at most 1, got 1.0001"
    for bad in ("nan", "inf", "-inf", "1e999", "٠.5", "0.５", "1_0", " 1", "0x1"):
        assert refused(parse, bad) == f"expected a number such as 1, got '{bad}'"
    below = number(0.0, 10.0, below=True, rule="must be below 10")
    assert below("0") == 0.0 and refused(below, "10") == "must be below 10, got 10"


def test_sizes_each_once_in_range():
    parse = sizes(100)
    assert parse("16, 64,+32") == [16, 64, 32]
    assert "each size must be between 1 and 100" in refused(parse, "16,101")
    assert "each size once" in refused(parse, "4,4")
    assert "expected comma-separated integers (digits 0-9) like 16,64,256" in refused(parse, "16,６4")
    assert "each size must be between" in refused(parse, ",")


def _constants(tree: ast.AST) -> set[int]:
    """The values of the integer expressions written with constants only (``2**63 - 1``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and all(isinstance(n, ast.Constant | ast.operator | ast.BinOp)
                                               for n in ast.walk(node)):
            try:
                found.add(eval(compile(ast.Expression(node), "<constant>", "eval")))  # noqa: S307 (constants only)
            except (ArithmeticError, TypeError):
                pass
    return found


def test_one_max_seed():
    """The largest seed is written once (prose may name it): no other module computes 2**63 - 1."""
    where = [p.relative_to(SRC).as_posix() for p in sorted(SRC.rglob("*.py"))
             if MAX_SEED in _constants(ast.parse(p.read_text(encoding="utf-8")))]
    assert where == ["_options.py"]
