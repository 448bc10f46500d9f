"""The layering of docs/architecture.md, checked on the source: what may import what, and the one
place that knows how ``in_proj`` is packed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "selfattention"


def _imported_names(path: Path) -> list[tuple[str, str]]:
    """(module relative to the package, name) for each name a file imports from selfattention
    (``import selfattention.x`` gives (x, "*"))."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(SRC).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = list(package[: len(package) - node.level + 1])
            elif module.startswith("selfattention"):
                base, module = [], module.removeprefix("selfattention")
            else:
                continue
            module = ".".join([*base, *module.split(".")]).strip(".")
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("selfattention").strip("."), "*") for a in node.names
                      if a.name.startswith("selfattention")]
    return found


def _imports(path: Path) -> set[str]:
    """The selfattention modules a file imports, as dotted names relative to the package."""
    return {module for module, _ in _imported_names(path)}


def test_viz_imports_nothing_from_models():
    for path in (SRC / "viz").glob("*.py"):
        bad = [m for m in _imports(path) if m.startswith("models") or m in ("explain", "cli", "train")]
        assert not bad, f"{path.name} imports {bad}"


def test_tiers_know_no_modules_or_models():
    for name in ("functional.py", "blockwise.py", "masks.py", "reference.py", "_checks.py"):
        bad = [m for m in _imports(SRC / name) if m.split(".")[0] in ("layers", "models", "viz", "train")]
        assert not bad, f"{name} imports {bad}"


# What a layer may take from the tiers' side: the dispatcher and what it says, never a tier.
_LAYER_MAY_IMPORT = {"functional": {"attention", "resolve_backend", "available_backends", "BACKENDS"}}
_TIERS = ("blockwise", "kernels", "block_mask")


def test_layers_reach_the_tiers_only_through_attention():
    """layers.py and transformer.py call ``attention()`` (and ask ``resolve_backend`` what it would
    run); they may use the shared rules (``_checks``, ``masks``: no tier), never a tier or the
    dispatcher's insides."""
    for name in ("layers.py", "transformer.py"):
        for module, what in _imported_names(SRC / name):
            assert module.split(".")[0] not in _TIERS, f"{name} imports {what} from {module}"
            if module in _LAYER_MAY_IMPORT:
                assert what in _LAYER_MAY_IMPORT[module], f"{name} imports {what} from {module}"


@pytest.mark.parametrize("rule, owner", [
    (r"expected broadcastable to", "masks.py"),  # check_mask_shape
    (r"not in (masks\.)?ALIGNMENTS", "masks.py"),  # check_alignment
    (r"expected a floating-point dtype", "_checks.py"),  # check_dtype
])
def test_each_rule_is_written_once(rule, owner):
    """A rule and its message live in the module that owns it; every door calls it, none copies it."""
    pattern = re.compile(rule)
    where = [str(path.relative_to(SRC)) for path in sorted(SRC.rglob("*.py"))
             if pattern.search(path.read_text(encoding="utf-8"))]
    assert where == [owner]


def test_in_proj_is_sliced_only_by_the_layer():
    """Reading q, k or v out of the packed projection is MultiHeadAttention's job (project,
    head_projections); the loaders fill it with pack_in_proj."""
    slicing = r"in_proj(\.(weight|bias))?\s*(\[|\)?\.(split|chunk|narrow|unflatten))"
    pattern = re.compile(slicing + r"|[^_]in_proj\(")
    for path in SRC.rglob("*.py"):
        if path.name == "layers.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(SRC)}:{n}: {line.strip()}"


def test_one_module_for_the_errors_the_command_line_reports():
    from selfattention import errors

    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and path.name != "errors.py":
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert bases & {n for n in dir(errors) if n.endswith("Error")} or bases == {"RuntimeError"}, (
                    f"{path.relative_to(SRC)}: {node.name} is a user-facing error outside errors.py")


def test_the_toy_dimension_limit_is_one_number():
    from selfattention import explain_cli
    from selfattention.models.toy import TOY_MAX_DIM

    assert explain_cli.MAX_DIM == TOY_MAX_DIM  # the option's bound is the model's
