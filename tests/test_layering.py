"""The packages of sparsetrain import each other in one direction only (no cycles, not even
through function-level imports), and nothing uses JAX's private modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first: a package may import only packages listed before it (and itself). The
# training loop sits above the RDU glue: it runs either step object (XLA or emulated RDU), while
# the RDU glue builds its programs from the pure train step of the training package.
LAYERS = ["allocator", "errors", "run_files", "kernels", "sparsity", "data", "config", "models", "training", "rdu",
          "training.loop", "evaluation", "commands", "cli"]


def _imports(path: Path) -> list[str]:
    """Every module an import statement in `path` names, at any depth of the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def _package(module: str) -> str:
    """The layer of a module: its package, or a module listed as a layer of its own."""
    parts = module.split(".")
    return ".".join(parts[1:3]) if ".".join(parts[1:3]) in LAYERS else parts[1]


FILES = sorted((ROOT / "sparsetrain").rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    rel = path.relative_to(ROOT / "sparsetrain").with_suffix("")
    own = _package("sparsetrain." + ".".join(rel.parts))
    if own == "__init__":
        return
    assert own in LAYERS, f"add the new package {own!r} to LAYERS"
    for module in _imports(path):
        if module.startswith("sparsetrain."):
            assert LAYERS.index(_package(module)) <= LAYERS.index(own), f"{own} imports {module}"


@pytest.mark.parametrize("path", FILES + sorted((ROOT / "rdu_xla_backend").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_jax_modules(path):
    assert not [m for m in _imports(path) if m.startswith("jax._src")]


def test_the_backend_never_imports_sparsetrain():
    for path in (ROOT / "rdu_xla_backend").rglob("*.py"):
        assert not [m for m in _imports(path) if m.split(".")[0] == "sparsetrain"], path
