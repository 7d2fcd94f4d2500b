"""A sparsetrain step as a program for the RDU performance model and emulator.

`program(cfg, mode, indices)` builds one step of a recipe's model (train, prefill or decode) from
abstract shapes with concrete block indices; `program_roles(mode)` says what each of its arguments
is (the backend places tensors by role); `lower_program` lowers a program with those roles.

The backend costs block-sparse matmuls from their named calls (the rules of
`sparsetrain.rdu.rules`, registered by importing it here) and attention from its dataflow
operators, so a program is traced with the pure-JAX kernels (`use_kernel_backend("jax")`): the
compiled CPU and Pallas kernels are opaque custom calls to it. This is the one place that choice
is made.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rdu_xla_backend.workload.lowering import lower
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.models.family import abstract_model, model_spec
from sparsetrain.models.kv_cache import CachedDecoder, abstract_cache
from sparsetrain.rdu import rules as _block_sparse_rules  # noqa: F401  (registers the call rules)
from sparsetrain.rdu.layouts import recipe_indices, with_indices
from sparsetrain.training.optim import make_optimizer
from sparsetrain.training.step import ModelFunctions, init_state, make_train_step

MODES = ("train", "prefill", "decode")


def lower_program(fn: Callable, *args: Any, roles: Any, **kwargs: Any):
    """`rdu_xla_backend.lower(fn, *args, roles=roles, **kwargs)` with every kernel traced in pure
    JAX and the block-sparse call rules registered.

    Args:
      fn: the program, e.g. a train step `(state, batch) -> (state, metrics)`.
      args: its arguments (arrays or ShapeDtypeStructs).
      roles: what each argument is (`program_roles(mode)` for a `program`; see `lower`).
      kwargs: options of `lower` (mode="fused"/"unfused", name=...).

    Returns:
      The lowered graph of fused kernels.
    """
    with use_kernel_backend("jax"):
        return lower(fn, *args, roles=roles, **kwargs)


def traced_in_pure_jax(fn: Callable) -> Callable:
    """``fn`` whose every trace uses the pure-JAX kernels: for a program lowered by someone else
    (the backend's calibration lowers what ``calibration_programs`` builds)."""
    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        with use_kernel_backend("jax"):
            return fn(*args)

    return wrapped


def program(cfg, mode: str, indices: dict | None = None) -> tuple[Callable, tuple]:
    """(function, args) of one step of the recipe's model (GPT or Llama) in ``mode``.

    Nothing is allocated but the block indices: every other argument is a ShapeDtypeStruct; the
    sparse linears' ``row_indices`` are concrete, ``indices`` (kind -> int (L, nc, k), e.g. a
    run's, ``layouts.run_indices``) or else the recipe's initial layout
    (``layouts.recipe_indices``). With B = data.batch_size and T = data.seq_len:

    - train: ``step(state, {tokens, targets: (B, T)}) -> (state, metrics)``, float32 params.
    - prefill: ``(params, indices, tokens (B, T)) -> (logits (B, vocab), KV cache)``: the prompt's
      forward writing the keys/values of its T positions; logits of the last position only.
    - decode: ``(params, indices, cache, token (B,), position ()) -> (logits (B, vocab), cache)``:
      ONE new token per sequence at position T-1, attending over a KV cache of T positions (T-1
      earlier tokens and its own), then writing its keys/values into the cache.

    Inference weights (and the KV cache) are in the compute dtype ``model.dtype``.
    """
    if mode not in MODES:
        raise ValueError(f"--mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    spec = model_spec(cfg)
    model = abstract_model(spec)
    sparse = any(lin.sparse for _, lin in spec.linears)
    by_kind = (indices if indices is not None else recipe_indices(spec)) if sparse else {}
    B, T = cfg.data.batch_size, cfg.data.seq_len
    if mode == "train":
        fns = ModelFunctions(model)
        tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
        tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
        state = jax.eval_shape(lambda: init_state(fns, tx, 0))
        state["indices"] = with_indices(state["indices"], by_kind)
        return make_train_step(fns, tx, schedule), (state, {"tokens": tokens, "targets": tokens})
    dec = CachedDecoder(model)
    params, idx = dec.initial()
    idx = with_indices(idx, by_kind)
    dtype = jnp.dtype(cfg.model.dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), params)
    if mode == "prefill":
        def prefill(params, indices, tokens):
            return dec.prefill(params, indices, tokens, max_len=T, last_logits_only=True)

        return prefill, (params, idx, jax.ShapeDtypeStruct((B, T), jnp.int32))
    return dec.decode, (params, idx, abstract_cache(model, B, T),
                        jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))


def _train_role(path: str, leaf) -> str:
    """Role of a leaf of the train step's (state, batch): params are weights, opt_state the
    optimizer's, everything else (indices, step, rng, the batch) activations."""
    if path.startswith("[0]['opt_state']"):
        return "optimizer_state"
    return "weights" if path.startswith("[0]['params']") else "activations"


def program_roles(mode: str):
    """What each argument of ``program(cfg, mode)``'s function is to the program, as
    ``rdu_xla_backend.lower(..., roles=...)`` takes it (the backend places tensors by role)."""
    if mode == "train":  # (state, batch)
        return _train_role
    if mode == "prefill":  # (params, indices, tokens)
        return ("weights", "activations", "activations")
    return ("weights", "activations", "kv_cache", "activations", "activations")  # decode


def lower_mode(cfg, mode: str, indices: dict | None = None, **kwargs: Any):
    """``program(cfg, mode, indices)`` lowered with its roles (kwargs: options of `lower`)."""
    fn, args = program(cfg, mode, indices)
    return lower_program(fn, *args, roles=program_roles(mode), **kwargs)


def mode_assumptions(cfg, mode: str) -> list[str]:
    """What the traced program of ``mode`` does and does not include."""
    T, dtype = cfg.data.seq_len, cfg.model.dtype
    if mode == "prefill":
        return [f"model: prefill = the forward over {T} prompt tokens per sequence, writing their "
                f"keys/values into a KV cache of {T} positions; logits of the last position only; "
                f"weights and cache in {dtype}"]
    if mode == "decode":
        return [f"model: decode = ONE new token per sequence at position {T - 1}; each layer reads "
                f"the KV cache ({T - 1} earlier positions + the new one) once and attends over it; "
                f"the new keys/values are written into the cache after the layer loop; weights and "
                f"cache in {dtype}"]
    return []
