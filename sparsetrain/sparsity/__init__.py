"""Block-sparse weights: layouts, mask patterns and the block-sparse matmul."""

from sparsetrain.sparsity.layout import (
    BlockLayout,
    blocks_per_column,
    check_block_shape,
    dense_to_values,
    layout_from_mask,
    layout_to_mask,
    values_to_dense,
)
from sparsetrain.sparsity.matmul import block_sparse_matmul, block_sparse_matmul_reference, matmul_flops
from sparsetrain.sparsity.patterns import (
    LAYOUT_BUILDERS,
    butterfly,
    dense,
    magnitude,
    make_layout,
    random_balanced,
)

__all__ = [
    "BlockLayout",
    "LAYOUT_BUILDERS",
    "block_sparse_matmul",
    "block_sparse_matmul_reference",
    "blocks_per_column",
    "butterfly",
    "check_block_shape",
    "dense",
    "dense_to_values",
    "layout_from_mask",
    "layout_to_mask",
    "magnitude",
    "make_layout",
    "matmul_flops",
    "random_balanced",
    "values_to_dense",
]
