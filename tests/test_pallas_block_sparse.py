"""The Pallas GPU kernels of block_sparse_matmul, run in Pallas interpret mode on CPU.

Against the masked dense product (numpy float64 on the same rounded inputs): forward, dx and
dvalues, block sizes 32/64/128, float32 and bfloat16, balanced and unbalanced layouts (input rows
storing no block and rows storing one in every column), token counts that are not a multiple of
the token tile. The kernels are lowered for CUDA (Triton) without a device when JAX can.
"""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from sparsetrain.kernels import pallas_block_sparse as pbs
from sparsetrain.sparsity import (
    block_sparse_matmul,
    dense_to_values,
    layout_from_mask,
    layout_to_mask,
    random_balanced,
    values_to_dense,
)
from sparsetrain.kernels.dispatch import kernel_backend, kernel_backend_info, use_kernel_backend


def _unbalanced_mask(nr: int, nc: int, k: int) -> np.ndarray:
    """Every column stores rows 0 .. k-1 shifted by at most one: row 0 in every column, the last
    row in none (per-row counts nc, ..., 0)."""
    mask = np.zeros((nr, nc), bool)
    for j in range(nc):
        mask[[0] + [1 + (j + s) % k for s in range(k - 1)], j] = True
    assert mask[0].all() and not mask[-1].any()
    return mask


def _layout(kind: str, nr: int, nc: int, k: int, block: int):
    if kind == "unbalanced":
        return layout_from_mask(_unbalanced_mask(nr, nc, k), (block, block))
    return random_balanced(jax.random.PRNGKey(nr * nc + k), (nr * block, nc * block),
                           (block, block), k / nr)


def _inputs(layout, tokens: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_in, n_out = layout.shape
    x = jnp.asarray(rng.standard_normal((tokens, n_in)), dtype)
    values = jnp.asarray(rng.standard_normal(layout.values_shape) / np.sqrt(n_in), dtype)
    dy = jnp.asarray(rng.standard_normal((tokens, n_out)), dtype)
    return x, values, dy


def _reference(x, values, layout, dy):
    """Masked dense y, dx, dW in float64 numpy from the (already rounded) inputs."""
    f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
    w = f64(values_to_dense(values.astype(jnp.float32), layout))
    x, dy = f64(x), f64(dy)
    mask = np.repeat(np.repeat(np.asarray(layout_to_mask(layout)), layout.block[0], 0),
                     layout.block[1], 1)
    return x @ w, dy @ w.T, (x.T @ dy) * mask


@jax.jit
def _through_dispatch(x, values, layout, dy):
    with use_kernel_backend("pallas"):
        y, vjp = jax.vjp(lambda x, v: block_sparse_matmul(x, v, layout), x, values)
    return (y, *vjp(dy))


CASES = [  # (block, nr, nc, k, tokens, layout kind)
    (32, 5, 3, 3, 40, "unbalanced"),
    (64, 4, 2, 2, 24, "unbalanced"),
    (128, 3, 2, 1, 16, "balanced"),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("block,nr,nc,k,tokens,kind", CASES, ids=[f"b{c[0]}-{c[5]}" for c in CASES])
def test_forward_and_gradients_match_masked_dense(dtype, block, nr, nc, k, tokens, kind):
    layout = _layout(kind, nr, nc, k, block)
    x, values, dy = _inputs(layout, tokens, dtype)
    y, dx, dv = _through_dispatch(x, values, layout, dy)
    ry, rdx, rdw = _reference(x, values, layout, dy)
    assert y.dtype == dx.dtype == dv.dtype == dtype
    assert y.shape == ry.shape and dx.shape == rdx.shape and dv.shape == layout.values_shape
    # float32: exact up to summation order; bfloat16: float32 accumulation, one final rounding
    # (relative 2^-8), so the error stays at a few bf16 ulps of each entry's magnitude.
    rtol = 1e-5 if dtype == jnp.float32 else 2 ** -7
    for got, want in ((y, ry), (dx, rdx)):
        scale = np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * scale)
    rdv = np.asarray(jax.device_get(dense_to_values(jnp.asarray(rdw), layout)))
    np.testing.assert_allclose(np.asarray(dv, np.float64), rdv, rtol=rtol,
                               atol=rtol * np.abs(rdv).max())
    if kind == "unbalanced":  # the last input row stores no block: its dx is exactly zero
        assert not np.asarray(dx, np.float32)[:, -block:].any()


def test_dispatch_traces_the_pallas_kernels_in_the_named_calls():
    layout = _layout("unbalanced", 4, 2, 2, 32)
    x, values, dy = _inputs(layout, 16, jnp.float32)
    jaxpr = str(jax.make_jaxpr(_through_dispatch.__wrapped__)(x, values, layout, dy))
    for name in ("block_sparse_matmul_forward", "block_sparse_matmul_backward",
                 "block_sparse_forward", "block_sparse_dx", "block_sparse_dvalues"):
        assert name in jaxpr
    assert jaxpr.count("pallas_call") == 3


def test_transposed_layout_lists_each_rows_blocks():
    mask = _unbalanced_mask(5, 4, 3)
    layout = layout_from_mask(mask, (16, 16))
    row_ptr, ids = map(np.asarray, pbs.transposed_layout(layout.row_indices, 5))
    rows = np.asarray(layout.row_indices)
    assert row_ptr.tolist() == [0, *np.cumsum(mask.sum(1)).tolist()]
    for r in range(5):
        blocks = ids[row_ptr[r]:row_ptr[r + 1]]
        assert sorted(blocks.tolist()) == blocks.tolist()
        assert all(rows.reshape(-1)[b] == r for b in blocks)
        assert sorted(b // 3 for b in blocks) == np.flatnonzero(mask[r]).tolist()


def test_kernel_choice():
    assert not pbs.supports((48, 64)) and not pbs.supports((8, 8)) and pbs.supports((16, 128))
    with use_kernel_backend("pallas"):
        assert kernel_backend(jnp.bfloat16) == kernel_backend(jnp.float32) == "pallas"
        assert "Pallas" in kernel_backend_info()
    if jax.default_backend() == "cpu":  # auto never picks Pallas on CPU
        assert kernel_backend(jnp.bfloat16) == "jax"
    # Blocks Triton cannot tile fall back to pure JAX (no pallas_call in the program).
    layout = random_balanced(jax.random.PRNGKey(0), (96, 96), (48, 48), 0.5)
    x, values, dy = _inputs(layout, 16, jnp.float32)
    assert "pallas_call" not in str(jax.make_jaxpr(_through_dispatch.__wrapped__)(x, values, layout, dy))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("block", [64, 128])
def test_kernels_lower_for_cuda_without_a_device(dtype, block):
    """jax.export for platforms=['cuda'] runs the Triton lowering (jaxpr -> Triton IR) of all three
    kernels here; compiling that IR to PTX happens in XLA on a GPU and is not covered."""
    layout = _layout("unbalanced", 4, 3, 2, block)
    x, values, dy = _inputs(layout, 256, dtype)
    tile = 256 if block == 128 else None  # 256 x 128 float32 accumulator: 8 warps
    fn = jax.jit(lambda x, v, r, dy: (pbs.forward(x, v, r, tile=tile),
                                      *pbs.backward(x, v, r, dy, tile=tile)))
    exported = export.export(
        fn, platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(x, values, layout.row_indices, dy)
    text = exported.mlir_module()
    assert text.count("stablehlo.custom_call @__gpu$xla.gpu.triton") == 3
    assert exported.platforms == ("cuda",)
    assert [o.shape for o in exported.out_avals] == [(256, layout.shape[1]), x.shape, values.shape]


def test_gpu_benchmark_tiny_smoke_run(tmp_path):
    """benchmarks/gpu_block_sparse.py --tiny runs its real code path in interpret mode and writes
    JSON whose sparse results match the masked dense product; without --tiny it refuses."""
    bench = _load_benchmark()
    if jax.default_backend() != "gpu":
        assert bench.main(["--out", str(tmp_path / "no.json")]) == 2
        assert not (tmp_path / "no.json").exists()
    out = tmp_path / "tiny.json"
    assert bench.main(["--tiny", "--skip-step", "--blocks", "32", "--densities", "0.5",
                       "--rounds", "1", "--tiles", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] and result["block_sparse_kernel_bf16"] == "pallas"
    [row] = result["linears"]
    assert row["block"] == 32 and row["density"] == 0.5 and row["sparse_s"] > 0
    assert row["max_rel_err"] < 2 ** -6  # bfloat16 results, float32 accumulation
    assert list(row["pallas_s_by_tile"]) == ["16"] and row["pallas_s_by_tile"]["16"] > 0


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_block_sparse.py"
    spec = importlib.util.spec_from_file_location("gpu_block_sparse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_refuses_blocks_that_supports_rejects():
    """The reason for pbs.supports: Triton's lowering needs power-of-two tiles (48 is refused)."""
    layout = random_balanced(jax.random.PRNGKey(0), (192, 192), (48, 48), 0.5)
    x, values, _ = _inputs(layout, 64, jnp.bfloat16)
    assert not pbs.supports(layout.block)
    with pytest.raises(ValueError, match="power of 2"):
        export.export(jax.jit(lambda x, v, r: pbs.forward(x, v, r)), platforms=["cuda"])(
            x, values, layout.row_indices)
