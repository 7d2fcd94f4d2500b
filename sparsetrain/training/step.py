"""The train step library: a GPT as pure functions, the train state, and the step that updates it.

The train state is a plain pytree (dicts of arrays and the Optax state):

    {"params": ..., "indices": ..., "opt_state": ..., "step": int32 (), "rng": uint32 key data}

`indices` holds the block-row indices of the sparse linears: not trained, checkpointed, and the
same shapes whatever blocks are stored, so changing them never recompiles the step. A sparse
training flow (`sparsity/schedule.py`: static, gradual pruning, prune-and-regrow) may add a
"flow" entry and updates the masks between steps with its own jitted function.

`train_step_fn` is the pure step; `XlaTrainStep` jits it (backend xla) and
`sparsetrain.rdu.step.EmulatedTrainStep` runs it on the emulated RDU (backend rdu). Both have
the same interface, so the loop (`loop.py`) never asks which one it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sparsetrain.config import Config
from sparsetrain.data.pipeline import eval_batches
from sparsetrain.models.gpt import GPT, BlockIndices, GPTSpec, abstract_model, build_model
from sparsetrain.sparsity.schedule import Flow, make_flow
from sparsetrain.training.optim import make_optimizer


class ModelFunctions:
    """A GPT split into its static graph and its (params, indices) pytrees of plain arrays."""

    def __init__(self, model: GPT):
        self.spec: GPTSpec = model.spec
        self.graphdef, params, indices = nnx.split(model, nnx.Param, BlockIndices)
        self._params = nnx.to_pure_dict(params)
        self._indices = nnx.to_pure_dict(indices)
        self._templates = (params, indices)

    def initial(self) -> tuple[dict, dict]:
        """(params, indices) as nested dicts of arrays."""
        return self._params, self._indices

    def model(self, params: dict, indices: dict) -> GPT:
        """The GPT holding these arrays."""
        p = jax.tree.map(lambda x: x, self._templates[0])
        nnx.replace_by_pure_dict(p, params)
        i = jax.tree.map(lambda x: x, self._templates[1])
        nnx.replace_by_pure_dict(i, indices)
        return nnx.merge(self.graphdef, p, i)

    def logits(self, params: dict, indices: dict, tokens: jax.Array, dropout_key=None) -> jax.Array:
        """tokens int32 (B, T) -> logits float32 (B, T, vocab); `dropout_key` only while training."""
        return self.model(params, indices)(tokens, dropout_key)

    def loss(self, params: dict, indices: dict, batch: dict, dropout_key=None) -> jax.Array:
        """Mean next-token cross-entropy (nats) of a batch {tokens, targets: int32 (B, T)}."""
        return self.model(params, indices).mean_loss(batch["tokens"], batch["targets"], dropout_key)


def init_state(fns: ModelFunctions, tx: optax.GradientTransformation, seed: int) -> dict:
    """The train state of a fresh model (see the module docstring); seed: the state's dropout key."""
    params, indices = fns.initial()
    return {"params": params, "indices": indices, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}


def dense_twin(spec: GPTSpec) -> ModelFunctions:
    """The same GPT with every linear dense, abstract (no weights): RigL's dense gradient."""
    linears = tuple((kind, dataclasses.replace(lin, density=1.0)) for kind, lin in spec.linears)
    return ModelFunctions(abstract_model(dataclasses.replace(spec, linears=linears, pattern="dense")))


@dataclasses.dataclass
class Setup:
    """Everything a run's state is made of: model functions, optimizer, flow, initial state."""

    spec: GPTSpec
    model: GPT
    fns: ModelFunctions
    tx: optax.GradientTransformation
    schedule: Any
    flow: Flow
    state: dict   # real arrays, or ShapeDtypeStructs when built abstract


def build_setup(cfg: Config, vocab_size: int, abstract: bool = False) -> Setup:
    """Model, optimizer, flow and initial train state of a recipe.

    `abstract=True` allocates nothing (ShapeDtypeStruct leaves): the restore target of a
    checkpoint, for evaluation, memory planning, emulation or for converting one run into another.
    """
    spec = GPTSpec.from_config(cfg, vocab_size, stored=True)
    if spec.pattern == "magnitude":  # the blocks come from the init_from checkpoint
        spec = dataclasses.replace(spec, pattern="butterfly")
    model = abstract_model(spec) if abstract else build_model(spec, cfg.run.seed)
    fns = ModelFunctions(model)
    tx, schedule = make_optimizer(cfg.optimizer, cfg.run.steps)
    if cfg.run.nonfinite == "skip":  # a step with NaN/inf gradients leaves params and moments as they were
        tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg.run.max_skipped_steps)
    dense_loss = None
    if cfg.sparsity.flow == "prune_regrow" and cfg.sparsity.regrow == "gradient":
        twin = dense_twin(spec)
        dense_loss = lambda params, batch: twin.loss(params, {}, batch)
    flow = make_flow(cfg.sparsity, spec, cfg.run.steps, dense_loss)
    make = lambda: flow.init(init_state(fns, tx, cfg.run.seed))
    state = jax.eval_shape(make) if abstract else make()
    return Setup(spec, model, fns, tx, schedule, flow, state)


def train_step_fn(fns: ModelFunctions, tx: optax.GradientTransformation, schedule, flow: Flow | None = None):
    """The pure `step(state, batch) -> (state, metrics)` (jitted by `make_train_step`, lowered to the
    RDU emulator by backend rdu).

    A flow's `mask` removes pruned blocks from the gradients and the updates (they stay zero).
    """
    mask = flow.mask if flow is not None else (lambda tree, state: tree)

    def step(state: dict, batch: dict):
        # The dropout key comes from the checkpointed rng: a resumed run drops the same units.
        next_key, dropout_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        dropout_key = dropout_key if fns.spec.has_dropout else None
        loss, grads = jax.value_and_grad(fns.loss)(state["params"], state["indices"], batch, dropout_key)
        grads = mask(grads, state)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            updates = mask(updates, state)
            params = optax.apply_updates(state["params"], updates)
        rng = jax.random.key_data(next_key)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        new = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": rng}
        return new, metrics

    return step


def make_train_step(fns: ModelFunctions, tx: optax.GradientTransformation, schedule, flow: Flow | None = None,
                    out_shardings=None):
    """A jitted `step(state, batch) -> (state, metrics)`; the state's buffers are donated.

    `out_shardings` (state shardings, metrics) keeps a sharded state's layout fixed across steps.
    """
    return jax.jit(train_step_fn(fns, tx, schedule, flow), donate_argnums=0, out_shardings=out_shardings)


class XlaTrainStep:
    """`step(state, batch) -> (state, metrics)` compiled by XLA (run.backend: xla).

    The interface every train step of the loop has:
      `after_mask_update(state, batch)`: called after a flow changed the block indices;
      `step_metrics(tokens_per_step)`: extra per-step metrics (none here);
      `summary()`: what the run summary records about the step (how often it was compiled).
    """

    def __init__(self, step_fn: Callable, out_shardings=None):
        self.compiles = 0

        def counted(state, batch):
            self.compiles += 1  # runs once per trace: jit traces once per new input signature
            return step_fn(state, batch)

        self._jitted = jax.jit(counted, donate_argnums=0, out_shardings=out_shardings)

    def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
        return self._jitted(state, batch)

    def after_mask_update(self, state: dict, batch: dict) -> None:
        """New indices have the same shapes: nothing to recompile."""

    def step_metrics(self, tokens_per_step: int) -> dict:
        return {}

    def summary(self) -> dict:
        return {"train_step_compiles": self.compiles}


def make_eval_step(fns: ModelFunctions):
    """Jitted `(params, indices, batch) -> mean loss` (nats/token)."""
    return jax.jit(fns.loss)


def evaluate(eval_step, state: dict, windows: np.ndarray, batch_size: int, max_batches: int) -> float:
    """Mean validation loss (nats/token) over the first `max_batches` fixed val batches."""
    losses = [float(eval_step(state["params"], state["indices"], b))
              for b in eval_batches(windows, batch_size, max_batches)]
    return float(np.mean(losses))
