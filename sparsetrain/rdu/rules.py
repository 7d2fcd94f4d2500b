"""How the RDU backend costs sparsetrain's block-sparse matmul: rules for its named calls.

`sparsetrain.kernels.block_sparse` shows every block-sparse matmul in a jaxpr as one named call,
`block_sparse_matmul_forward(x2, values, rows)` or `block_sparse_matmul_backward(x2, values,
rows, dy)`, whose body is a CPU formulation (block-major planes, an FFI custom call). Importing
this module registers a rule for each name with `rdu_xla_backend.workload.rules`, so a lowering
costs the call as a dataflow chip runs it (one fused kernel: the stored blocks and their real
indices, `rules.block_sparse_ops`), not from its host body. The pricing itself stays in the
backend; this module only says which operand is which.
"""

from __future__ import annotations

from rdu_xla_backend.workload import rules
from sparsetrain.kernels.block_sparse import BACKWARD_CALL as BACKWARD
from sparsetrain.kernels.block_sparse import FORWARD_CALL as FORWARD
# Operand positions of both calls: x2 (T, in), values (nc, k, bk, bn), rows (nc, k)[, dy].
X, VALUES, ROWS = 0, 1, 2


def forward_rule(eqn, ins, count: int, path: str):
    """Ops of y = x W (see `rules.block_sparse_ops`)."""
    return rules.block_sparse_ops(eqn, ins, count, path, backward=False, x=X, values=VALUES,
                                  rows=ROWS)


def backward_rule(eqn, ins, count: int, path: str):
    """Ops of dx = dy W^T and dvalues = x_r^T dy_j (see `rules.block_sparse_ops`)."""
    return rules.block_sparse_ops(eqn, ins, count, path, backward=True, x=X, values=VALUES,
                                  rows=ROWS)


def has_operands(eqn) -> bool:
    """A call with its operands as inputs (x, values, rows[, dy]); a call whose operands were all
    folded into constants has none and is inlined instead."""
    return len(eqn.invars) >= 3


def register() -> None:
    """Register both rules (idempotent; done on import)."""
    rules.register_call_rule(FORWARD, forward_rule, has_operands)
    rules.register_call_rule(BACKWARD, backward_rule, has_operands)


register()
