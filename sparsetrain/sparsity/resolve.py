"""The sparsity of each linear kind, resolved once from the recipe's sparsity section and the
model's linear shapes.

`resolve_sparsity(sparsity, shapes)` is the one place the per-kind overrides, the defaults, the
dense pattern, the ERK distribution and a gradual flow's initial density are combined. The model
(`GPTSpec.from_config`), the training flows, the checkpoint conversion, the accounting and the
recipe validation all read its `KindSparsity` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsetrain.sparsity.distribution import erk_densities
from sparsetrain.sparsity.layout import BlockLayout, blocks_per_column


@dataclass(frozen=True)
class KindSparsity:
    """One linear kind (n_in -> n_out features) with square blocks of `block`.

    `density` is the fraction of blocks stored (the shape of its values), `final_density` the
    fraction alive at the end of training (below `density` only for gradual pruning).
    """

    n_in: int
    n_out: int
    density: float = 1.0
    block: int = 64
    final_density: float | None = None   # None = density

    @property
    def sparse(self) -> bool:
        return self.density < 1.0

    @property
    def n_row_blocks(self) -> int:
        return self.n_in // self.block

    @property
    def k_stored(self) -> int:
        """Blocks stored per column (raises ValueError when the density leaves none)."""
        return blocks_per_column(self.n_row_blocks, self.density)

    @property
    def k_final(self) -> int:
        """Blocks alive per column at the end of the flow."""
        final = self.density if self.final_density is None else self.final_density
        return blocks_per_column(self.n_row_blocks, final)

    def layout(self, rows) -> BlockLayout:
        """The BlockLayout of one layer with block-row indices `rows` (nc, k)."""
        return BlockLayout(rows, (self.n_in, self.n_out), (self.block, self.block))


def requested_density(sparsity: Any, kind: str, shapes: dict[str, tuple[int, int]]) -> tuple[float, int]:
    """(final density, block) the recipe asks of `kind`: its override, else the section's default;
    1.0 for the dense pattern; the ERK share of the global density with distribution=erk."""
    own = getattr(sparsity, kind)
    density = sparsity.density if own.density is None else own.density
    block = sparsity.block if own.block is None else own.block
    if sparsity.pattern == "dense":
        density = 1.0
    elif sparsity.distribution == "erk":
        density = erk_densities(shapes, sparsity.density)[kind]
    return float(density), int(block)


def _stored_density(sparsity: Any, final: float, n_row_blocks: int) -> float:
    """Gradual pruning stores its initial density all along (kept below 1 so the kind stays
    block-sparse and pruning only masks); other flows store the final density."""
    if sparsity.flow != "gradual" or final >= 1.0 or sparsity.initial_density <= final:
        return final
    return max(min(sparsity.initial_density, 1.0 - 0.25 / n_row_blocks), final)


def resolve_sparsity(sparsity: Any, shapes: dict[str, tuple[int, int]],
                     stored: bool = True) -> dict[str, KindSparsity]:
    """Each linear kind's resolved sparsity.

    Args:
      sparsity: the recipe's sparsity section (`config.SparsityConfig`).
      shapes: kind -> (n_in, n_out) of one weight (`config.linear_shapes`).
      stored: True: `density` is what training stores (a gradual flow's initial density);
        False: the final density (what the trained model keeps; `info` and `emulate` show it).

    Returns:
      kind -> KindSparsity, in the order of `shapes`.
    """
    out = {}
    for kind, (n_in, n_out) in shapes.items():
        final, block = requested_density(sparsity, kind, shapes)
        density = _stored_density(sparsity, final, n_in // block) if stored else final
        out[kind] = KindSparsity(n_in, n_out, density, block, final)
    return out
