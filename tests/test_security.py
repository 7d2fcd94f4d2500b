"""Nothing a recipe, a dataset or a checkpoint holds is ever executed: no pickle, YAML only through
`safe_load`, no `trust_remote_code`, no eval/exec; checkpoints are Orbax arrays + JSON."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from sparsetrain.config import ConfigError, load_recipe
from sparsetrain.training.loop import train
from tests.conftest import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("sparsetrain", "rdu_xla_backend", "scripts", "benchmarks")
                 for p in (ROOT / d).rglob("*.py"))
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def _calls_and_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (("import", a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield "import", node.module.split(".")[0]
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):  # a builtin: eval(...), exec(...)
                yield "call", f.id
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):  # module.function
                yield "call", f"{f.value.id}.{f.attr}"
            for kw in node.keywords:
                if kw.arg == "trust_remote_code":
                    yield "kwarg", "trust_remote_code"


def test_sources_never_unpickle_eval_or_trust_remote_code():
    assert len(SOURCES) > 30
    found = []
    for path in SOURCES:
        for kind, name in _calls_and_imports(ast.parse(path.read_text(), str(path))):
            bad = ((kind == "import" and name in FORBIDDEN_MODULES)
                   or (kind == "call" and (name in FORBIDDEN_CALLS or name in ("yaml.load", "yaml.unsafe_load",
                                                                              "np.load", "numpy.load")))
                   or kind == "kwarg")
            if bad:
                found.append(f"{path.relative_to(ROOT)}: {kind} {name}")
    assert found == []


def test_recipe_yaml_tags_are_not_constructed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises((ConfigError, yaml.YAMLError, ValueError)):
        load_recipe(path)


def test_checkpoint_files_hold_no_pickle(text_corpus, tmp_path):
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus), ["run.steps=1"])
    train(cfg)
    files = [p for p in (cfg.out_dir / "checkpoints").rglob("*") if p.is_file()]
    assert files
    for p in files:
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), p
