"""The program builder ``rdu_xla_backend.calibrate`` needs: recipes lowered by sparsetrain.

The backend never imports sparsetrain; its calibration suite receives a builder
``builder(recipe, mode, overrides) -> (fn, args, roles)`` instead. This module supplies it: ``recipe``
is a file name under the repository's ``recipes/`` (or a path), ``mode`` one of
``programs.MODES`` ('train', 'prefill', 'decode'), ``overrides`` dotted ``key=value`` strings.
Every argument is a ``jax.ShapeDtypeStruct`` (abstract shapes: nothing is allocated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sparsetrain.config import load_recipe
from sparsetrain.rdu.programs import program, program_roles, traced_in_pure_jax

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_program(recipe: str, mode: str, overrides: Sequence[str] = ()
                   ) -> tuple[Callable, tuple, object]:
    """(function, abstract args, their roles for ``lower``) of one ``mode`` step of ``recipe``
    with ``overrides``; the function traces the pure-JAX kernels (no opaque custom calls)."""
    path = Path(recipe)
    if not path.is_file():
        path = RECIPES / recipe
    cfg = load_recipe(str(path), list(overrides), check_data=False)
    fn, args = program(cfg, mode)
    return traced_in_pure_jax(fn), args, program_roles(mode)
