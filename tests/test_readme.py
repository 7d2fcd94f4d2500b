"""The README's cheap commands print what the README shows: `info`, `fields` and a bad recipe.

Each shown block is read from README.md itself, so the README and the code cannot drift apart
unnoticed. Timing lines ("in 0.1 s") vary from run to run and are compared without the number.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shown_block(after: str) -> list[str]:
    """The lines of the first ``` block that follows the text `after` in the README."""
    start = README.index(after)
    body = re.search(r"```\n(.*?)```", README[start:], re.S)
    assert body is not None, f"no code block after {after!r}"
    return body.group(1).rstrip("\n").split("\n")


def run_cli(capsys, monkeypatch, argv: list[str]) -> tuple[int, list[str]]:
    """Exit status and printed lines (stdout, then stderr) of `sparsetrain ARGV` run from the root."""
    monkeypatch.chdir(ROOT)
    status = main(argv)
    out = capsys.readouterr()
    return status, (out.out + out.err).rstrip("\n").split("\n")


def without_seconds(line: str) -> str:
    return re.sub(r"in [0-9.]+ s\)", "in N s)", line)


def test_info_prints_the_lines_the_readme_shows(capsys, monkeypatch):
    shown = shown_block("`sparsetrain info recipes/gpt3-13b-sparse.yaml` prints")
    status, printed = run_cli(capsys, monkeypatch, ["info", "recipes/gpt3-13b-sparse.yaml"])
    assert status == 0
    assert [without_seconds(line) for line in printed] == [without_seconds(line) for line in shown]


def test_a_bad_recipe_is_refused_with_the_line_the_readme_shows(capsys, monkeypatch):
    shown = shown_block("A bad field stops before anything is compiled")
    command, expected = shown[0], shown[1:]
    assert command.startswith("$ sparsetrain ")
    status, printed = run_cli(capsys, monkeypatch, shlex.split(command)[2:])
    assert status == 2 and printed == expected


def test_fields_prints_the_lines_the_readme_shows(capsys, monkeypatch):
    shown = shown_block("`sparsetrain fields` lists every field")
    status, printed = run_cli(capsys, monkeypatch, ["fields"])
    assert status == 0 and len(shown) >= 3
    missing = [line for line in shown if line not in printed]
    assert not missing, f"README lines not printed by `sparsetrain fields`: {missing}"
    assert [printed.index(line) for line in shown] == sorted(printed.index(line) for line in shown)


@pytest.mark.parametrize("path", sorted(set(re.findall(r"\]\(([^)#]+)\)", README))))
def test_readme_links_stay_inside_the_repository(path):
    assert not path.startswith(("http://", "https://", "/", "..")), path
    assert (ROOT / path).exists(), path


def test_info_mesh_prints_the_memory_plan_the_readme_shows():
    """The README's FSDP plan of GPT-3 13B (scanned layers, as a GPU compiles them), in a fresh
    process: `info --mesh` starts JAX with 8 virtual CPU devices."""
    intro = "`sparsetrain info recipes/gpt3-13b.yaml --mesh 1x8x1 --set data.batch_size=8` plans"
    shown = shown_block(intro)
    command = re.search(r"`(sparsetrain info [^`]+)`", intro).group(1)
    done = subprocess.run([sys.executable, "-m", "sparsetrain.cli", *shlex.split(command)[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.splitlines()
    assert printed[-len(shown) - 1:-1] == shown, printed[-len(shown) - 1:]


def test_the_exit_code_table_is_the_one_errors_py_documents():
    import sparsetrain.errors as errors

    documented = re.findall(r"^\s+(\d+)\s+(.+)$", errors.__doc__, re.M)
    section = README[README.index("## Exit codes and errors"):]
    table = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    assert documented and [(c, m.replace("`", "")) for c, m in table] == documented
