"""The GPT: shapes, presets, and sparse linears equal to dense masked linears."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsetrain.config import Config, from_dict
from sparsetrain.models.accounting import count_params, dense_param_count, model_counts
from sparsetrain.models.gpt import GPTSpec, abstract_model, build_model, stored_layouts
from sparsetrain.sparsity import BlockLayout, values_to_dense


@nnx.jit
def forward(model, tokens):
    return model(tokens)


def spec_of(sparse: bool, **model) -> GPTSpec:
    raw = {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2, "context": 16, **model},
           "sparsity": {"pattern": "random_balanced", "density": 0.5, "block": 16} if sparse else {},
           "data": {"vocab_size": 300, "seq_len": 16}}
    return GPTSpec.from_config(from_dict(Config, raw))


def densified(sparse_model):
    """A dense GPT whose kernels are the sparse model's stored blocks scattered into zeros."""
    dense = build_model(spec_of(False, remat=sparse_model.spec.remat), seed=1)
    for name in ("wte", "wpe", "ln_f_scale", "ln_f_bias"):
        getattr(dense, name).set_value(getattr(sparse_model, name).get_value())
    for name in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias"):
        getattr(dense.layers, name).set_value(getattr(sparse_model.layers, name).get_value())
    for kind, lin in sparse_model.spec.linears:
        src, dst = getattr(sparse_model.layers, kind), getattr(dense.layers, kind)
        layouts = [BlockLayout(row_indices=idx, shape=(lin.n_in, lin.n_out), block=(lin.block, lin.block))
                   for idx in src.row_indices.get_value()]
        dst.kernel.set_value(jnp.stack([values_to_dense(v, l) for v, l in zip(src.values.get_value(), layouts)]))
        dst.bias.set_value(src.bias.get_value())
    return dense


def test_forward_shape_and_causality():
    model = build_model(spec_of(True), seed=0)
    tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 300)
    logits = forward(model, tokens)
    assert logits.shape == (3, 16, 300) and logits.dtype == jnp.float32
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 300)
    out = forward(model, changed)
    np.testing.assert_allclose(out[:, :10], logits[:, :10], atol=1e-5)
    assert not np.allclose(out[:, 10:], logits[:, 10:])


@pytest.mark.parametrize("remat", [True])  # the rematerialised path; every other test runs without
def test_sparse_model_equals_dense_model_with_masked_kernels(remat):
    sparse = build_model(spec_of(True, remat=remat), seed=0)
    for kind in ("qkv", "mlp_down"):  # non-zero biases, so they are checked too
        b = getattr(sparse.layers, kind).bias
        b.set_value(0.1 * jax.random.normal(jax.random.key(3), b.get_value().shape))
    dense = densified(sparse)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 300)
    np.testing.assert_allclose(forward(sparse, tokens), forward(dense, tokens), rtol=2e-5, atol=2e-5)

    def loss(model):
        return jnp.mean(jax.nn.log_softmax(model(tokens))[..., 0])

    grad = nnx.jit(nnx.grad(loss))
    g_sparse, g_dense = grad(sparse), grad(dense)
    np.testing.assert_allclose(g_sparse["wte"].get_value(), g_dense["wte"].get_value(), rtol=1e-4, atol=1e-6)
    lin = sparse.spec.linear("mlp_up")
    for layer in range(2):
        layout = BlockLayout(row_indices=sparse.layers.mlp_up.row_indices.get_value()[layer],
                             shape=(lin.n_in, lin.n_out), block=(16, 16))
        np.testing.assert_allclose(
            values_to_dense(g_sparse["layers"]["mlp_up"]["values"].get_value()[layer], layout),
            g_dense["layers"]["mlp_up"]["kernel"].get_value()[layer] * np.kron(
                np.asarray(_mask(layout)), np.ones((16, 16))),
            rtol=1e-4, atol=1e-6)


def _mask(layout):
    from sparsetrain.sparsity import layout_to_mask
    return layout_to_mask(layout)


def test_bfloat16_compute_close_to_float32():
    spec32 = spec_of(True)
    spec16 = spec_of(True, dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 300)
    m32, m16 = build_model(spec32, 0), build_model(spec16, 0)
    out16 = forward(m16, tokens)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, forward(m32, tokens), atol=0.05)


def test_layers_are_one_scanned_body():
    model = build_model(spec_of(True, n_layers=6), seed=0)
    tokens = jnp.zeros((1, 16), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda t: model(t))(tokens)
    assert sum(e.primitive.name == "scan" for e in jaxpr.eqns) == 1


def test_stored_params_scale_with_density():
    dense, sparse = build_model(spec_of(False), 0), build_model(spec_of(True), 0)
    d_stored, d_idx = count_params(dense)
    s_stored, s_idx = count_params(sparse)
    assert d_idx == 0 and d_stored == dense_param_count(dense.spec)
    linear_dense = sum(l.n_in * l.n_out for _, l in dense.spec.linears) * 2
    assert d_stored - s_stored == linear_dense // 2  # density 1/2 stores half of every linear
    assert s_idx == sum((l.n_out // 16) * (l.n_in // 32) for _, l in sparse.spec.linears) * 2
    assert set(stored_layouts(sparse)) == {"qkv", "attn_out", "mlp_up", "mlp_down"}


def test_gpt3_13b_counts_without_allocating():
    raw = {"model": {"preset": "gpt3-13b"}, "data": {"vocab_size": 50257, "seq_len": 2048}}
    spec = GPTSpec.from_config(from_dict(Config, raw))
    model = abstract_model(spec)
    assert isinstance(model.wte.get_value(), jax.ShapeDtypeStruct)
    counts = model_counts(model, 2048)
    assert 12.8e9 <= counts.params_dense <= 12.9e9
    assert counts.params_stored == counts.params_dense
    # 6N + 12 L T d (Kaplan et al.): within 2% of the per-token training FLOPs
    approx = 6 * counts.params_dense + 12 * 40 * 2048 * 5120
    assert abs(counts.train_flops_per_token_dense / approx - 1) < 0.02
