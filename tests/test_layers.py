"""The packages import each other in one direction only, from the ground up:

    errors, xla_flags, config_ranges  <-  config  <-  data, model  <-  parallel, checkpoint
    <-  infer  <-  train  <-  eval, convert  <-  chips, hlo_costs  <-  roofline  <-  plan,
    quickstart, experiment_data, experiment_stats, run_version  <-  experiment  <-  cli
    <-  __main__

A unit may import from any layer below its own, never from its own layer's other units or from
above, so there is no cycle and no back edge. Every import counts, including those inside
functions (they run too); imports guarded by `TYPE_CHECKING` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llm_jax"
LAYERS = (
    ("errors", "xla_flags", "config_ranges"),
    ("storage",),
    ("config",),
    ("data", "model"),
    ("parallel", "checkpoint"),
    ("infer",),
    ("train",),
    ("eval", "convert"),
    ("chips", "hlo_costs"),
    ("roofline",),
    ("plan", "quickstart", "experiment_data", "experiment_stats", "run_version"),
    ("experiment",),
    ("cli",),
    ("__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str | None:
    """`llm_jax.train.loop` -> `train`; None outside the package or for the package root."""
    parts = module.split(".")
    return parts[1] if parts[0] == "llm_jax" and len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            node.body = []  # never runs
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "llm_jax":  # `from llm_jax import checkpoint`
                found += [(node.lineno, f"llm_jax.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def import_edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing unit, imported unit) for every import between two units."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        source = _unit(module)
        if source is None:
            continue
        for line, imported in _imported_modules(ast.parse(path.read_text(), str(path))):
            target = _unit(imported)
            if target is not None and target != source:
                edges.append((str(path.relative_to(PACKAGE.parent)), line, source, target))
    return edges


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert units == set(RANK), f"add these to LAYERS: {sorted(units - set(RANK))}"


def test_imports_only_go_down_the_layers():
    wrong = [f"{file}:{line}: {source} imports {target}"
             for file, line, source, target in import_edges() if RANK[target] >= RANK[source]]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_walk_sees_the_imports_it_checks():
    edges = {(source, target) for _, _, source, target in import_edges()}
    assert {("train", "parallel"), ("infer", "checkpoint"), ("cli", "train")} <= edges
