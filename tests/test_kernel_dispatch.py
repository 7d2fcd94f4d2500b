"""Kernel choice is scoped state: `use_kernel_backend` changes it for what is traced inside the
`with` block only, restores it on exit (also on an error), and changes no module attribute."""

import threading

import jax
import jax.numpy as jnp
import pytest

from sparsetrain.kernels import dispatch, ffi


def _default() -> str:
    return "ffi" if ffi.AVAILABLE and jax.device_count() == 1 else "jax"


def test_choice_is_scoped_and_restored():
    before = dispatch.kernel_choice()
    attributes = dict(vars(dispatch))
    with dispatch.use_kernel_backend("jax"):
        assert dispatch.kernel_choice() == "jax" and dispatch.kernel_backend(jnp.float32) == "jax"
        with dispatch.use_kernel_backend("auto"):
            assert dispatch.kernel_backend(jnp.float32) == _default()
        assert dispatch.kernel_backend(jnp.float32) == "jax"
        assert dict(vars(dispatch)) == attributes  # no module global was rewritten
    assert dispatch.kernel_choice() == before
    with pytest.raises(RuntimeError):
        with dispatch.use_kernel_backend("jax"):
            raise RuntimeError("inside")
    assert dispatch.kernel_choice() == before


def test_another_thread_keeps_its_own_choice():
    seen = []
    with dispatch.use_kernel_backend("jax"):
        worker = threading.Thread(target=lambda: seen.append(dispatch.kernel_choice()))
        worker.start()
        worker.join()
    assert seen == [dispatch.kernel_choice()]  # a new thread starts from the default, not "jax"


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="kernel backend: 'cuda' is not allowed"):
        with dispatch.use_kernel_backend("cuda"):
            pass


def test_a_jitted_function_keeps_the_kernel_it_was_traced_with():
    traced = []

    @jax.jit
    def f(x):
        traced.append(dispatch.kernel_backend(x.dtype))
        return x + 1

    with dispatch.use_kernel_backend("jax"):
        f(jnp.ones(3))
    f(jnp.ones(3))  # cached: not traced again outside the block
    assert traced == ["jax"]
