"""Attention on a GPU backend: cuDNN when it takes the operands, else XLA, same result.

Without a GPU the cuDNN attempt raises while tracing (no cuDNN), so these tests check the
fallback and the kernel choice; the cuDNN path itself runs only on a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsetrain.kernels.attention import attention_kernel, cudnn_or_xla_attention
from sparsetrain.kernels.dispatch import use_kernel_backend
from conftest import causal_attention_reference


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bfloat16", "float32"])
def test_cudnn_or_xla_is_causal_attention(dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 24, 2, 32), jnp.float32).astype(dtype) for key in keys)
    o = jax.jit(cudnn_or_xla_attention)(q, k, v)
    assert o.dtype == dtype and o.shape == q.shape
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bfloat16 output: 8 mantissa bits
    np.testing.assert_allclose(np.asarray(o, np.float64), causal_attention_reference(q, k, v), rtol=tol, atol=tol)
    # Token 0 attends only to itself: its output is its own value row.
    np.testing.assert_allclose(np.asarray(o[:, 0], np.float32), np.asarray(v[:, 0], np.float32),
                               rtol=tol, atol=tol)


def test_kernel_choice_by_backend_and_dtype():
    expected_16bit = "cudnn" if jax.default_backend() == "gpu" else "jax"
    assert attention_kernel(jnp.bfloat16) == expected_16bit
    assert attention_kernel(jnp.float16) == expected_16bit
    with use_kernel_backend("pallas"):  # the block-sparse GPU kernels say nothing about attention
        assert attention_kernel(jnp.float32) == "jax"
