"""The layering of docs/architecture.md, checked on the source: what may import what, and the one
place that knows how ``in_proj`` is packed."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "selfattention"


@cache
def _parse(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once for every rule of this module (no rule changes a tree)."""
    return ast.parse(path.read_text(encoding="utf-8"))


def _imported_names(path: Path) -> list[tuple[str, str]]:
    """(module relative to the package, name) for each name a file imports from selfattention
    (``import selfattention.x`` gives (x, "*"))."""
    tree = _parse(path)
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
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and path.name != "errors.py":
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert bases & {n for n in dir(errors) if n.endswith("Error")} or bases == {"RuntimeError"}, (
                    f"{path.relative_to(SRC)}: {node.name} is a user-facing error outside errors.py")


def test_the_toy_dimension_limit_is_one_number():
    from selfattention.explain import cli as explain_cli
    from selfattention.models.toy import TOY_MAX_DIM

    assert explain_cli.MAX_DIM == TOY_MAX_DIM  # the option's bound is the model's


# --- the package's shape (issue 18) --------------------------------------------------------------


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _guarded(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (never runs) or ``if __name__ == "__main__":`` (only when run as a script)."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    main = test.replace("'", '"') == '__name__ == "__main__"'
    return test in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or main


def _import_nodes(tree: ast.AST):
    """Every import of a module, at its top or inside a function, except in ``_guarded`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if _guarded(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        else:
            yield from _import_nodes(node)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module → the modules of the package it imports (dotted, relative to the package; a package
    is its __init__). ``from . import x`` counts as importing the submodule x when there is one. A
    package's __init__ importing its own submodules (its face) is left out."""
    modules = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = list(path.relative_to(src).parent.parts)
        deps = set()
        for node in _import_nodes(_parse(path)):
            if isinstance(node, ast.Import):
                deps |= {a.name.removeprefix("selfattention").strip(".") for a in node.names
                         if a.name.split(".")[0] == "selfattention"}
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif (node.module or "").split(".")[0] == "selfattention":
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("selfattention").strip(".") if not node.level else \
                (node.module or "")
            full = ".".join([*base, *([module] if module else [])])
            for alias in node.names:
                sub = f"{full}.{alias.name}".strip(".")
                deps.add(sub if sub in modules else full)
        is_init = path.name == "__init__.py"
        graph[name] = {d for d in deps if d in modules and d != name
                       and not (is_init and d.startswith(f"{name}.") if name else is_init)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    """No module imports, directly or through others, a module that imports it: at the top or inside
    a function alike (a lazy import is still a dependency)."""
    assert cycles(import_graph()) == []


def test_distributed_imports_nothing_above_it():
    """selfattention.distributed (ring attention and its torch.distributed plumbing) lies below the
    models, the training and the commands that use it: none of its modules imports train/,
    explain/, models/ or cli, at the top or lazily."""
    above = ("train", "explain", "models", "cli")
    for module, deps in import_graph().items():
        if module.split(".")[0] == "distributed":
            bad = sorted(d for d in deps if d.split(".")[0] in above)
            assert not bad, f"{module} imports {bad}"


def test_the_cycle_checker_finds_a_cycle(tmp_path):
    """The checker can fail: two modules that import each other (one lazily, as explain.py and
    explain_text.py did) are a cycle; a package's __init__ importing its own submodule is not."""
    pkg = tmp_path / "selfattention"
    (pkg / "explain").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "explain" / "__init__.py").write_text("def g():\n    from . import walk\n")
    (pkg / "explain" / "walk.py").write_text("from . import fmt\nfrom .. import a\n")
    (pkg / "explain" / "fmt.py").write_text("")
    assert cycles(import_graph(pkg)) == [["a", "b"]]


def test_at_most_17_top_level_modules():
    """The folders say most of the layout: src/selfattention/ holds at most 17 modules of its own."""
    modules = [p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(modules) <= 17, sorted(modules)


def test_no_private_name_is_imported_from_another_package():
    """A name with a leading underscore in a package (viz, models, train, explain, …) stays in it: no
    other package imports it. (The top-level modules are the root's, which every package is in.)"""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        mine = path.relative_to(SRC).parts
        home = mine[0] if len(mine) > 1 else ""
        for module, name in _imported_names(path):
            owner = module.split(".")[0] if (SRC / module.split(".")[0]).is_dir() else ""
            if name.startswith("_") and not name.startswith("__") and owner not in ("", home):
                found.append((str(path.relative_to(SRC)), module, name))
    assert not found, found


def _functions(path: Path) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(_parse(path))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_the_parsed_options_reach_one_function_of_explain():
    """Only the command's handler, explain.cli.run, takes the argparse Namespace; it hands plain
    values on."""
    takers = [f"{path.relative_to(SRC)}:{f.name}" for path in sorted((SRC / "explain").glob("*.py"))
              for f in _functions(path)
              if any(a.arg == "args" or "Namespace" in ast.unparse(a.annotation or ast.Constant(""))
                     for a in f.args.args + f.args.kwonlyargs)]
    assert takers == ["explain/cli.py:run"]


def test_layer_head_and_word_are_resolved_in_one_place():
    """explain.selection turns the options and the trace into a Selection; no other module of explain
    converts a layer or picks a default head or word (the quiz reads its own words, without a trace)."""
    rules = {"DEFAULT_LAYER": {"selection.py"}, "default_head": {"selection.py"},
             "default_word": {"selection.py"}, "resolve_word": {"selection.py", "quiz.py"}}
    for path in sorted((SRC / "explain").glob("*.py")):
        names = {n.id if isinstance(n, ast.Name) else n.attr
                 for n in ast.walk(_parse(path))
                 if isinstance(n, ast.Name | ast.Attribute)}
        names |= {name for _, name in _imported_names(path)}
        for name, where in rules.items():
            assert name not in names or path.name in where, f"explain/{path.name} uses {name}"


# Waiting for its owner (issue 18): distributed/__main__.py's _positive (use _options.positive).
_KNOWN_TYPES = {"distributed/__main__.py"}


def test_number_options_are_parsed_in_one_module():
    """An argparse type that reads a number is built by _options (digits 0-9 only, one message per
    rule); no other function both parses a number and raises ArgumentTypeError."""
    parsing = {"int", "float", "ascii_int", "ascii_float"}
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        if "ArgumentTypeError" not in path.read_text(encoding="utf-8"):
            continue  # (what the test below looks for in each function; unparsing every one is slow)
        for f in _functions(path):
            calls = {ast.unparse(n.func).split(".")[-1] for n in ast.walk(f) if isinstance(n, ast.Call)}
            if "ArgumentTypeError" in ast.unparse(f) and calls & parsing and path.name != "_options.py":
                found.add(str(path.relative_to(SRC)))
    assert found <= _KNOWN_TYPES, sorted(found - _KNOWN_TYPES)


def test_models_are_asked_what_they_are_only_through_the_protocol():
    """Every member of a traceable model is declared in models.traceable.Traceable with its default:
    no ``getattr(model, …, default)``/``hasattr(model, …)``, and no isinstance on a model class
    outside models/ (models.traceable adapts a model written from the outside, in one place)."""
    concrete = {"ToyModel", "PretrainedModel", "TracedDecoder"}
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix() == "models/traceable.py":
            continue
        for node in ast.walk(_parse(path)):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            args = [ast.unparse(a) for a in node.args]
            if node.func.id in ("getattr", "hasattr") and args and "model" in args[0]:
                raise AssertionError(f"{path.relative_to(SRC)}: {ast.unparse(node)}")
            named = set(re.findall(r"\w+", args[1])) if len(args) == 2 else set()
            if node.func.id == "isinstance" and named & concrete:
                assert path.parts[-2] == "models", f"{path.relative_to(SRC)}: {ast.unparse(node)}"
