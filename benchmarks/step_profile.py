"""Per-component profile of the GPT train step on CPU: where the step's time goes, dense and sparse.

Two methods, same components:

`trace_breakdown` (the default of train_throughput.py): a `jax.profiler` trace of the real step,
parsed here. Every executed HLO op is mapped to a component by the innermost named scope of its
`op_name` (gpt.py and step.py name them: linear, attention, embed, head, loss, layer_norm, bias,
bias_gelu, residual, optimizer); wall time is split among the ops running at each instant (two ops
on two threads get half each), so the components and "everything else" (ops outside those scopes:
reshapes, the q/k/v split, the gradient-norm metric, and the time no op runs) add up to the step.

`component_runners` (isolated): each component is a jitted forward+backward (`jax.vjp` with fixed random cotangents, so no extra
loss arithmetic) of the same shapes and the same model functions the real step runs, over all
layers at once, timed in interleaved rounds with the whole step (median per component):

- linears: the four linear kinds of every layer, matmul only (dense `jnp.dot` or the block-sparse
  kernel), gradients of inputs and weights;
- attention: causal attention of every layer (q, k, v -> o and back);
- head + embeddings + loss: token and position embedding gather (and its scatter-add gradient),
  the tied head and the mean cross-entropy;
- element-wise: LayerNorms (two per layer and the final one), bias adds, GELU, residual adds and
  their gradients;
- optimizer: the Optax update (clipping + AdamW) and `apply_updates` over every parameter;
- everything else: the measured step minus the sum above (reshapes, splits, the gradient norm
  metric, dispatch, and what fusing across component boundaries gains or loses).

`amdahl` turns a dense and a sparse profile into the sparse/dense limit: the dense step with
only its linears sped up by 1/stored fraction. Used by train_throughput.py (`--profile`).
"""

from __future__ import annotations

import dataclasses
import glob
import re
import statistics
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.profiler import ProfileData

from sparsetrain.kernels.attention import causal_attention_packed
from sparsetrain.kernels.fused_ops import bias_gelu
from sparsetrain.models.gpt import layer_norm, linear_apply
from sparsetrain.training.step import ModelFunctions

COMPONENTS = ("linears", "attention", "head_embed_loss", "elementwise", "optimizer")
SCOPES = {"linear": "linears", "attention": "attention", "embed": "head_embed_loss",
          "head": "head_embed_loss", "loss": "head_embed_loss", "layer_norm": "elementwise",
          "bias": "elementwise", "bias_gelu": "elementwise", "residual": "elementwise",
          "optimizer": "optimizer"}
KINDS = ("qkv", "attn_out", "mlp_up", "mlp_down")


def _normal(rng: np.random.Generator, shape, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(scale * rng.standard_normal(shape, dtype=np.float32))


def _vjp_runner(f: Callable, primals: tuple, cts) -> Callable[[], None]:
    """A thunk running the jitted forward + backward of f at primals with cotangents cts."""
    def fwd_bwd(primals, cts):
        out, pull = jax.vjp(f, *primals)
        return out, pull(cts)

    jitted = jax.jit(fwd_bwd)
    return lambda: jax.block_until_ready(jitted(primals, cts))


def _linears(fns: ModelFunctions, params: dict, indices: dict, B: int, T: int, rng) -> Callable:
    spec, L = fns.spec, fns.spec.shape.n_layers
    weights = {kind: {**{k: v for k, v in params["layers"][kind].items() if k != "bias"},
                      **indices.get("layers", {}).get(kind, {})} for kind in KINDS}
    xs = {kind: _normal(rng, (L, B, T, spec.linear(kind).n_in)) for kind in KINDS}
    cts = {kind: _normal(rng, (L, B, T, spec.linear(kind).n_out)) for kind in KINDS}
    train = {kind: {k: v for k, v in w.items() if k != "row_indices"} for kind, w in weights.items()}
    rows = {kind: {k: v for k, v in w.items() if k == "row_indices"} for kind, w in weights.items()}

    def f(train, xs):
        out = {}
        for kind in KINDS:
            lin = dataclasses.replace(spec.linear(kind), bias=False)
            out[kind] = jnp.stack([
                linear_apply({k: v[l] for k, v in {**train[kind], **rows[kind]}.items()}, lin, xs[kind][l])
                for l in range(L)])
        return out

    return _vjp_runner(f, (train, xs), cts)


def _attention(fns: ModelFunctions, B: int, T: int, rng) -> Callable:
    shape = fns.spec.shape
    out_shape = (shape.n_layers, B, T, shape.n_heads, shape.d_model // shape.n_heads)
    qkv = _normal(rng, out_shape[:3] + (3,) + out_shape[3:])  # packed, as the model runs it
    ct = _normal(rng, out_shape)

    def f(qkv):
        return jnp.stack([causal_attention_packed(qkv[l]) for l in range(shape.n_layers)])

    return _vjp_runner(f, (qkv,), ct)


def _head_embed_loss(fns: ModelFunctions, params: dict, batch: dict, rng) -> Callable:
    B, T = batch["tokens"].shape
    d = fns.spec.shape.d_model
    h = _normal(rng, (B, T, d))
    ct_e = _normal(rng, (B, T, d), 1e-3)
    tokens, targets = jnp.asarray(batch["tokens"]), jnp.asarray(batch["targets"])

    def f(wte, wpe, h):
        e = wte[tokens] + wpe[:T]
        logits = jnp.dot(h, wte.T, preferred_element_type=jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return loss, e

    return _vjp_runner(f, (params["wte"], params["wpe"], h), (jnp.ones(()), ct_e))


def _elementwise(fns: ModelFunctions, params: dict, B: int, T: int, rng) -> Callable:
    shape = fns.spec.shape
    L, d = shape.n_layers, shape.d_model
    lay = params["layers"]
    small = {k: lay[k] for k in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias")}
    small.update({f"{kind}_bias": lay[kind]["bias"] for kind in KINDS})
    small.update(ln_f_scale=params["ln_f_scale"], ln_f_bias=params["ln_f_bias"])
    n_up = fns.spec.linear("mlp_up").n_out
    acts = {"x": (L, B, T, d), "qkv": (L, B, T, 3 * d), "a": (L, B, T, d), "u": (L, B, T, n_up),
            "m": (L, B, T, d), "xf": (B, T, d)}
    acts = {k: _normal(rng, s) for k, s in acts.items()}

    def f(small, acts):
        outs = []
        for l in range(L):
            g = {k: v[l] for k, v in small.items() if not k.startswith("ln_f")}
            x = acts["x"][l]
            h1 = layer_norm(x, g["ln1_scale"], g["ln1_bias"])
            q = acts["qkv"][l] + g["qkv_bias"]
            x1 = x + (acts["a"][l] + g["attn_out_bias"])
            h2 = layer_norm(x1, g["ln2_scale"], g["ln2_bias"])
            u = bias_gelu(acts["u"][l], g["mlp_up_bias"])
            x2 = x1 + (acts["m"][l] + g["mlp_down_bias"])
            outs.append((h1, q, h2, u, x2))
        out = tuple(jnp.stack(o) for o in zip(*outs))
        return out + (layer_norm(acts["xf"], small["ln_f_scale"], small["ln_f_bias"]),)

    primals = (small, acts)
    out_shapes = jax.eval_shape(f, *primals)
    cts = jax.tree.map(lambda s: _normal(rng, s.shape), out_shapes)
    return _vjp_runner(f, primals, cts)


def _optimizer(params: dict, tx: optax.GradientTransformation, rng) -> Callable:
    grads = jax.tree.map(lambda p: _normal(rng, p.shape, 1e-3), params)
    opt_state = tx.init(params)

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return lambda: jax.block_until_ready(update(grads, opt_state, params))


def component_runners(fns: ModelFunctions, tx: optax.GradientTransformation, batch: dict,
                      initial: tuple[dict, dict] | None = None, seed: int = 0) -> dict[str, Callable[[], None]]:
    """name -> thunk running that component's jitted forward+backward once (see module doc).

    `initial`: (params, indices) to profile with; default copies of `fns.initial()` (a train step
    donates the buffers of its state, so take copies before it runs).
    """
    rng = np.random.default_rng(seed)
    params, indices = initial if initial is not None else jax.tree.map(jnp.copy, fns.initial())
    B, T = batch["tokens"].shape
    return {"linears": _linears(fns, params, indices, B, T, rng),
            "attention": _attention(fns, B, T, rng),
            "head_embed_loss": _head_embed_loss(fns, params, batch, rng),
            "elementwise": _elementwise(fns, params, B, T, rng),
            "optimizer": _optimizer(params, tx, rng)}


def profile_rounds(runners: dict[str, dict[str, Callable]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Interleaved timing: {config: {name: thunk}} -> {config: {name: [s per round]}}.

    Every thunk runs twice first (compile, warm caches); then each round runs every thunk of every
    configuration once, so a machine whose load drifts slows all of them alike.
    """
    for group in runners.values():
        for run in group.values():
            run(); run()
    times = {c: {n: [] for n in g} for c, g in runners.items()}
    for _ in range(rounds):
        for c, group in runners.items():
            for name, run in group.items():
                t0 = time.perf_counter()
                run()
                times[c][name].append(time.perf_counter() - t0)
    return times


def breakdown(times: dict[str, list[float]], step_key: str = "step") -> dict:
    """Medians (s) and shares of the step per component, with the residual 'everything else'."""
    step = statistics.median(times[step_key])
    comp = {n: statistics.median(times[n]) for n in COMPONENTS if n in times}
    comp["everything_else"] = step - sum(comp.values())
    return {"step_s": step, "components_s": comp,
            "shares": {n: t / step for n, t in comp.items()}}


def amdahl(dense: dict, sparse: dict, stored_fraction: float) -> dict:
    """Sparse/dense limits from two breakdowns.

    `limit`: dense step with its linears scaled by the stored fraction, all else unchanged;
    `with_sparse_rest`: the sparse step's own non-linear parts plus ideal linears (what the
    kernels could still give); `measured`: dense step / sparse step.
    """
    d, s = dense["components_s"], sparse["components_s"]
    ideal_lin = d["linears"] * stored_fraction
    return {"measured": dense["step_s"] / sparse["step_s"],
            "limit": dense["step_s"] / (dense["step_s"] - d["linears"] + ideal_lin),
            "with_sparse_rest": dense["step_s"] / (sparse["step_s"] - s["linears"] + ideal_lin),
            "sparse_linears_over_ideal": s["linears"] / ideal_lin}


def format_profile(name: str, dense: dict, sparse: dict, limits: dict) -> str:
    """A markdown table of both breakdowns and one line of Amdahl limits."""
    lines = [f"\nstep profile, {name} (median s per step, share of step)",
             "| component | dense s | dense share | sparse s | sparse share |", "|---|---|---|---|---|"]
    for n in (*COMPONENTS, "everything_else"):
        lines.append(f"| {n} | {dense['components_s'][n]:.4f} | {dense['shares'][n]:.0%} | "
                     f"{sparse['components_s'][n]:.4f} | {sparse['shares'][n]:.0%} |")
    lines.append(f"| measured step | {dense['step_s']:.4f} | | {sparse['step_s']:.4f} | |")
    lines.append(f"sparse/dense: measured {limits['measured']:.2f}x; Amdahl limit (dense step, linears "
                 f"x stored fraction) {limits['limit']:.2f}x; with the sparse step's own rest "
                 f"{limits['with_sparse_rest']:.2f}x; sparse linears at {limits['sparse_linears_over_ideal']:.2f}x "
                 "their ideal time (ideal: dense linears x stored fraction)")
    return "\n".join(lines)


def op_components(hlo_text: str) -> dict[str, str]:
    """Compiled HLO text -> {instruction name: component} by the innermost named scope of its
    op_name (a fusion carries its root's); instructions outside every scope are left out."""
    out = {}
    for m in re.finditer(r'^\s+(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', hlo_text, re.M):
        name, op_name = m.groups()
        best, where = None, -1
        for scope, component in SCOPES.items():
            at = max(op_name.rfind(scope + ")"), op_name.rfind(scope + "/"))
            if at > where:
                best, where = component, at
        if best is not None:
            out[name] = best
    return out


def _attribute(events: list[tuple[int, int, str]]) -> dict[str, float]:
    """Split wall time (ns) among concurrent events: {component: ns}."""
    edges = sorted({t for s, e, _ in events for t in (s, e)})
    starts = sorted(events)
    out, active, i = {}, [], 0
    for t0, t1 in zip(edges, edges[1:]):
        while i < len(starts) and starts[i][0] <= t0:
            active.append(starts[i])
            i += 1
        active = [ev for ev in active if ev[1] > t0]
        for _, _, comp in active:
            out[comp] = out.get(comp, 0.0) + (t1 - t0) / len(active)
    return out


def trace_breakdown(run: Callable[[], None], hlo_text: str, steps: int = 3) -> dict:
    """Profile `steps` calls of `run` (one compiled train step each) with jax.profiler.

    Returns breakdown()'s dict: median step wall time (s) and each component's share of it.
    """
    names = op_components(hlo_text)
    walls = []
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(steps):
                t0 = time.perf_counter()
                run()
                walls.append(time.perf_counter() - t0)
        data = ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
        events = [(ev.start_ns, ev.end_ns, names[ev.name]) for plane in data.planes
                  for line in plane.lines if line.name.startswith("tf_XLA")
                  for ev in line.events if ev.name in names]
    ns = _attribute(events)
    times = {"step": walls, **{c: [ns.get(c, 0.0) / steps / 1e9] for c in COMPONENTS}}
    return breakdown(times)
