"""GPT-2 checkpoints in the Hugging Face layout, in and out of our run directories.

A Hugging Face GPT-2 directory holds `config.json`, `model.safetensors` and the tokenizer
(`tokenizer.json`, or `vocab.json` + `merges.txt`). Our GPT computes what `GPT2LMHeadModel`
computes (pre-LayerNorm with eps 1e-5, tanh-approximated GELU, learned positions, tied head), and
GPT-2's Conv1D weights are (in, out) like ours, so the mapping is names only, no transposes:

    h.{i}.ln_1.weight / .bias         -> layers/ln1_scale[i] / ln1_bias[i]        (d,)
    h.{i}.attn.c_attn.weight / .bias  -> layers/qkv/kernel[i] / bias[i]            (d, 3d) / (3d,)
    h.{i}.attn.c_proj.weight / .bias  -> layers/attn_out/kernel[i] / bias[i]       (d, d) / (d,)
    h.{i}.ln_2.weight / .bias         -> layers/ln2_scale[i] / ln2_bias[i]        (d,)
    h.{i}.mlp.c_fc.weight / .bias     -> layers/mlp_up/kernel[i] / bias[i]         (d, 4d) / (4d,)
    h.{i}.mlp.c_proj.weight / .bias   -> layers/mlp_down/kernel[i] / bias[i]       (4d, d) / (d,)
    wte.weight, wpe.weight            -> wte (vocab, d), wpe (n_positions, d)
    ln_f.weight / .bias               -> ln_f_scale / ln_f_bias                    (d,)

(names may carry the `transformer.` prefix of GPT2LMHeadModel; `lm_head.weight` must equal `wte`).
Tensors are read with `safetensors.numpy` (no torch). Anything we do not compute the same way (other
architectures, activations, untied heads, cross-attention, ...) is refused with `HFFormatError`,
one line naming the file and the field or tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from sparsetrain.training.checkpoint import Checkpointer
from sparsetrain.config import Config, DataConfig, apply_override, from_dict, save_recipe, validate
from sparsetrain.data.pipeline import EOT_TOKEN, BatchIterator, build_datasets
from sparsetrain.models.accounting import model_counts
from sparsetrain.config.presets import PRESETS
from sparsetrain.sparsity.schedule import densify_stacked, sparse_kinds
from sparsetrain.training.start import restore_run
from sparsetrain.training.step import build_setup

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
ARCHITECTURE = "GPT2LMHeadModel"
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # both are 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
LAYER_NORM_EPS = 1e-5  # sparsetrain.models.gpt.layer_norm
# (HF name inside h.{i}., path under params["layers"])
LAYER_TENSORS = (
    ("ln_1.weight", ("ln1_scale",)), ("ln_1.bias", ("ln1_bias",)),
    ("attn.c_attn.weight", ("qkv", "kernel")), ("attn.c_attn.bias", ("qkv", "bias")),
    ("attn.c_proj.weight", ("attn_out", "kernel")), ("attn.c_proj.bias", ("attn_out", "bias")),
    ("ln_2.weight", ("ln2_scale",)), ("ln_2.bias", ("ln2_bias",)),
    ("mlp.c_fc.weight", ("mlp_up", "kernel")), ("mlp.c_fc.bias", ("mlp_up", "bias")),
    ("mlp.c_proj.weight", ("mlp_down", "kernel")), ("mlp.c_proj.bias", ("mlp_down", "bias")),
)
GLOBAL_TENSORS = (("wte.weight", "wte"), ("wpe.weight", "wpe"),
                  ("ln_f.weight", "ln_f_scale"), ("ln_f.bias", "ln_f_bias"))
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints


class HFFormatError(ValueError):
    """A Hugging Face checkpoint we cannot import exactly (one line: file, field, what is allowed)."""


def _refuse(ok: bool, message: str) -> None:
    if not ok:
        raise HFFormatError(message)


def read_config(src: Path) -> dict:
    """The GPT-2 shape of `src/config.json`: {n_layer, n_embd, n_head, n_positions, vocab_size,
    embd_pdrop, attn_pdrop, resid_pdrop}; HFFormatError for what we do not compute the same way."""
    path = Path(src) / CONFIG_FILE
    _refuse(path.is_file(), f"{path}: missing (a Hugging Face GPT-2 directory has {CONFIG_FILE})")
    try:
        c = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path}: not valid JSON ({e})") from None
    arch = c.get("architectures") or [ARCHITECTURE]
    _refuse(c.get("model_type") == "gpt2", f"{path}: model_type {c.get('model_type')!r} is not "
            f"supported; supported: 'gpt2' ({ARCHITECTURE})")
    _refuse(arch == [ARCHITECTURE], f"{path}: architectures {arch} are not supported; supported: "
            f"[{ARCHITECTURE!r}]")
    checks = (("activation_function", c.get("activation_function", "gelu_new") in GELU_TANH, GELU_TANH),
              ("layer_norm_epsilon", c.get("layer_norm_epsilon", 1e-5) == LAYER_NORM_EPS, LAYER_NORM_EPS),
              ("n_inner", c.get("n_inner") in (None, 4 * c.get("n_embd", 0)), "null or 4 * n_embd"),
              ("scale_attn_weights", c.get("scale_attn_weights", True) is True, True),
              ("scale_attn_by_inverse_layer_idx", not c.get("scale_attn_by_inverse_layer_idx"), False),
              ("add_cross_attention", not c.get("add_cross_attention"), False),
              ("tie_word_embeddings", c.get("tie_word_embeddings", True) is True, True))
    for field, ok, allowed in checks:
        _refuse(ok, f"{path}: {field}={c.get(field)!r} is not supported; supported: {allowed}")
    out = {}
    for field in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        v = c.get(field)
        _refuse(isinstance(v, int) and v >= 1, f"{path}: {field}={v!r}; expected a positive integer")
        out[field] = v
    _refuse(out["n_embd"] % out["n_head"] == 0,
            f"{path}: n_head={out['n_head']} does not divide n_embd={out['n_embd']}")
    for field in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        out[field] = float(c.get(field, 0.1))
    return out


def read_tokenizer(src: Path, vocab_size: int) -> Tokenizer:
    """The byte-level BPE of `src` (tokenizer.json, else vocab.json + merges.txt); its vocabulary
    must be `vocab_size` and hold the end-of-text token."""
    src = Path(src)
    if (src / TOKENIZER_FILE).is_file():
        tok = Tokenizer.from_file(str(src / TOKENIZER_FILE))
        where = src / TOKENIZER_FILE
    elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(src / "vocab.json"), str(src / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        where = src / "vocab.json"
    else:
        raise HFFormatError(f"{src}: no tokenizer ({TOKENIZER_FILE}, or vocab.json + merges.txt)")
    _refuse(tok.token_to_id(EOT_TOKEN) is not None, f"{where}: has no {EOT_TOKEN} token")
    _refuse(tok.get_vocab_size() == vocab_size, f"{where}: vocabulary of {tok.get_vocab_size()} "
            f"tokens does not match config.json vocab_size={vocab_size}")
    return tok


def _short(name: str) -> str:
    return name[len("transformer."):] if name.startswith("transformer.") else name


def expected_shapes(hf: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor name (without `transformer.`) -> shape, for the GPT-2 of `read_config`."""
    d, V, P = hf["n_embd"], hf["vocab_size"], hf["n_positions"]
    shapes = {"wte.weight": (V, d), "wpe.weight": (P, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    per_layer = {"ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
                 "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
                 "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
                 "mlp.c_fc.weight": (d, 4 * d), "mlp.c_fc.bias": (4 * d,),
                 "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,)}
    for i in range(hf["n_layer"]):
        shapes.update({f"h.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def read_weights(src: Path, hf: dict) -> dict[str, np.ndarray]:
    """All tensors of `src/model.safetensors` by short name, float32, after checking that the
    names and shapes are exactly GPT-2's (HFFormatError names the first that is not)."""
    path = Path(src) / WEIGHTS_FILE
    _refuse(path.is_file(), f"{path}: missing (only safetensors weights are read; no pickle)")
    want = expected_shapes(hf)
    try:
        with safe_open(str(path), framework="np") as f:
            names = {_short(n): n for n in f.keys()}
            for short in want:
                _refuse(short in names, f"{path}: tensor {short!r} is missing")
            for short, full in names.items():
                if short in want:
                    shape = tuple(f.get_slice(full).get_shape())
                    _refuse(shape == want[short], f"{path}: tensor {full!r} has shape {shape}; "
                            f"config.json implies {want[short]}")
                elif short != "lm_head.weight" and not short.endswith(_BUFFERS):
                    raise HFFormatError(f"{path}: tensor {full!r} is not part of {ARCHITECTURE}")
            out = {s: np.asarray(f.get_tensor(names[s]), np.float32) for s in want}
            if "lm_head.weight" in names:
                _refuse(np.array_equal(f.get_tensor(names["lm_head.weight"]), out["wte.weight"]),
                        f"{path}: lm_head.weight differs from wte.weight (an untied head is not supported)")
    except HFFormatError:
        raise
    except Exception as e:  # a truncated file, an unsupported dtype: safetensors' own message
        raise HFFormatError(f"{path}: cannot be read: {type(e).__name__}: {str(e)[:200]}") from None
    return out


def params_from_hf(tensors: dict[str, np.ndarray], n_layers: int) -> dict:
    """Our GPT's parameter tree (nested dict, per-layer tensors stacked on axis 0) from HF tensors."""
    params: dict = {ours: tensors[hf] for hf, ours in GLOBAL_TENSORS}
    layers: dict = {}
    for hf, path in LAYER_TENSORS:
        stacked = np.stack([tensors[f"h.{i}.{hf}"] for i in range(n_layers)])
        node = layers
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = stacked
    params["layers"] = layers
    return params


def hf_from_params(params: dict, n_layers: int) -> dict[str, np.ndarray]:
    """HF tensors (GPT2LMHeadModel names, `transformer.` prefix) from a dense parameter tree."""
    out = {f"transformer.{hf}": np.asarray(params[ours], np.float32) for hf, ours in GLOBAL_TENSORS}
    for hf, path in LAYER_TENSORS:
        node = params["layers"]
        for key in path:
            node = node[key]
        stacked = np.asarray(node, np.float32)
        for i in range(n_layers):
            out[f"transformer.h.{i}.{hf}"] = np.ascontiguousarray(stacked[i])
    return out


def hf_config(shape, vocab_size: int, eot_id: int, dropout: tuple[float, float, float]) -> dict:
    """config.json of a GPT2LMHeadModel with our GPT's `shape` (a ModelShape) and vocabulary.
    dropout: (embd, attn, resid) rates."""
    return {"architectures": [ARCHITECTURE], "model_type": "gpt2", "activation_function": "gelu_new",
            "n_layer": shape.n_layers, "n_embd": shape.d_model, "n_head": shape.n_heads,
            "n_positions": shape.context, "n_ctx": shape.context, "n_inner": None,
            "vocab_size": vocab_size, "layer_norm_epsilon": LAYER_NORM_EPS,
            "embd_pdrop": dropout[0], "attn_pdrop": dropout[1], "resid_pdrop": dropout[2],
            "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
            "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32"}


def tokenizer_config(context: int) -> dict:
    """tokenizer_config.json that lets `AutoTokenizer` load our tokenizer.json as GPT-2's."""
    return {"tokenizer_class": "GPT2TokenizerFast", "bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN, "model_max_length": context, "add_prefix_space": False}


# ---------------------------------------------------------------------------------------------
# Run directories: import (HF directory -> run with checkpoint, tokenizer, recipe) and export
# ---------------------------------------------------------------------------------------------
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, "vocab.json", "merges.txt"]


def resolve_source(source: str) -> Path:
    """A local HF directory, or a hub name downloaded (config, safetensors, tokenizer) when online."""
    path = Path(source).expanduser()
    if path.exists():
        _refuse(path.is_dir(), f"{source}: not a directory (expected a Hugging Face model directory)")
        return path
    _refuse(not source.startswith((".", "/", "~")) and source.count("/") <= 1,
            f"{source}: no such directory")
    try:
        return Path(huggingface_hub.snapshot_download(source, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated repo: the hub's own reason
        raise HFFormatError(f"{source}: no such local directory, and fetching it from the Hugging Face "
                            f"hub failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _check_empty_out(out: Path) -> None:
    _refuse(not out.exists() or (out.is_dir() and not any(out.iterdir())),
            f"--out {out}: exists and is not empty; choose a new directory (nothing was written)")


def imported_recipe(hf: dict, out: Path, overrides: list[str] = ()) -> Config:
    """The resolved recipe of an imported GPT-2: its shape and dropout, dense, its tokenizer;
    `overrides` (`data.*` and `run.*` only) choose the data a later `eval`/`compare` scores on."""
    shape = (hf["n_layer"], hf["n_embd"], hf["n_head"], hf["n_positions"])
    preset = next((name for name, s in PRESETS.items() if s.family == "gpt"
                   and (s.n_layers, s.d_model, s.n_heads, s.context) == shape), None)
    model = {"preset": preset} if preset else {
        "preset": "gpt2-small", "n_layers": shape[0], "d_model": shape[1], "n_heads": shape[2],
        "context": shape[3]}
    model.update(embd_dropout=hf["embd_pdrop"], attn_dropout=hf["attn_pdrop"], resid_dropout=hf["resid_pdrop"])
    raw = {"model": model, "sparsity": {"pattern": "dense"},
           "data": {"tokenizer": str(out / TOKENIZER_FILE), "vocab_size": hf["vocab_size"],
                    "seq_len": min(DataConfig.seq_len, hf["n_positions"])},
           "run": {"name": out.name, "out_dir": str(out), "steps": 1, "wandb": "disabled"}}
    for o in overrides:
        _refuse(o.split("=", 1)[0].strip().split(".")[0] in ("data", "run"),
                f"--set {o!r}: only data.* and run.* can be set (the model comes from config.json)")
        apply_override(raw, o)
    cfg = from_dict(Config, raw)
    validate(cfg, check_data=False)  # the tokenizer file is written later
    return cfg


def import_run(source: str, out: str | Path, overrides: list[str] = ()) -> dict:
    """Import a HF GPT-2 into run directory `out` (checkpoint at step 0 with a fresh optimizer
    state, tokenizer.json, recipe.yaml, summary.json, empty metrics.jsonl). Everything is checked
    before anything is written; `out` appears only when complete. Returns the summary."""
    out = Path(out)
    _check_empty_out(out)
    src = resolve_source(source)
    hf = read_config(src)
    tok = read_tokenizer(src, hf["vocab_size"])
    params = params_from_hf(read_weights(src, hf), hf["n_layer"])
    cfg = imported_recipe(hf, out, overrides)
    with _staged(out, "importing") as tmp:
        tok.save(str(tmp / TOKENIZER_FILE))
        summary = _write_run(cfg, params, tmp, str(source))
    return summary


@contextlib.contextmanager
def _staged(out: Path, what: str):
    """A fresh hidden directory beside `out` to write into; it becomes `out` (an empty `out`
    replaced) only when the block completes, and is removed whatever happens."""
    tmp = out.with_name(f".{out.name}.{what}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_run(cfg: Config, params: dict, where: Path, source: str) -> dict:
    """Checkpoint (step 0), recipe, summary and metrics of an imported model, written in `where`."""
    data_cfg = dataclasses.replace(cfg.data, tokenizer=str(where / TOKENIZER_FILE))
    data = build_datasets(data_cfg, where)
    setup = build_setup(cfg, data.vocab_size, abstract=True)
    params = jax.tree.map(jnp.asarray, params)
    state = setup.flow.init({"params": params, "indices": jax.tree.map(lambda x: x, setup.state["indices"]),
                             "opt_state": setup.tx.init(params), "step": jnp.zeros((), jnp.int32),
                             "rng": jax.random.key_data(jax.random.key(cfg.run.seed))})
    bad = [jax.tree_util.keystr(p) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(state),
                                                         jax.tree.leaves(setup.state)) if a.shape != b.shape]
    _refuse(not bad and jax.tree.structure(state) == jax.tree.structure(setup.state),
            f"{source}: the weights do not fit our GPT of this shape ({bad or 'tree structure'})")
    meta = {"step": 0, "data_state": BatchIterator(data.train, cfg.data.batch_size, cfg.data.seed).state(),
            "recipe": cfg.to_dict(), "vocab_size": data.vocab_size, "fingerprint": data.fingerprint,
            "val_loss": None, "best_val_loss": None, "train_flops": 0.0, "wall_time_s": 0.0,
            "imported_from": source}
    ckpt = Checkpointer(where / "checkpoints", keep_last=1)
    try:
        ckpt.save(0, state, meta, val_loss=math.inf)
    finally:
        ckpt.close()
    save_recipe(cfg, where / "recipe.yaml")
    (where / "metrics.jsonl").write_text("")
    counts = model_counts(setup.model, cfg.data.seq_len)
    summary = {"run": cfg.run.name, "imported_from": source, "steps": 0, "tokens": 0,
               "params_dense": counts.params_dense, "params_stored": counts.params_stored,
               "params_alive": counts.params_stored, "train_flops_effective": 0.0, "train_flops_dense": 0.0,
               "flow": "imported", "wall_time_s": 0.0, "vocab_size": data.vocab_size,
               "fingerprint": data.fingerprint, "train_bytes": data.train_bytes, "val_bytes": data.val_bytes}
    (where / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def dense_params(cfg: Config, setup, state: dict) -> dict:
    """A run's parameters with every block-sparse linear densified (zeros at unstored blocks)."""
    params = jax.device_get(state["params"])
    layers = dict(params["layers"])
    for kind, info in sparse_kinds(setup.spec).items():
        rows = state["indices"]["layers"][kind]["row_indices"]
        dense = densify_stacked(jnp.asarray(layers[kind]["values"]), jnp.asarray(rows), info)
        layers[kind] = {"kernel": np.asarray(dense), "bias": layers[kind]["bias"]}
    return {**params, "layers": layers}


def export_run(run_dir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Write run `run_dir`'s checkpoint (newest if `step` is None) as a directory that
    `transformers` loads as GPT2LMHeadModel: model.safetensors, config.json, tokenizer files."""
    run_dir, out = Path(run_dir), Path(out)
    _check_empty_out(out)
    cfg, setup, state, meta = restore_run(run_dir, step)
    shape = cfg.shape()
    tok = Tokenizer.from_file(str(run_dir / TOKENIZER_FILE))
    tensors = hf_from_params(dense_params(cfg, setup, state), shape.n_layers)
    m = cfg.model
    config = hf_config(shape, int(meta["vocab_size"]), tok.token_to_id(EOT_TOKEN),
                       (m.embd_dropout, m.attn_dropout, m.resid_dropout))
    with _staged(out, "exporting") as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        tok.save(str(tmp / TOKENIZER_FILE))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(shape.context), indent=2))
    return out
