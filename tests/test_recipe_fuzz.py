"""Recipe fuzzing: any generated recipe is either accepted or refused with our own ConfigError,
never with an exception from deep inside Python, JAX or Flax; accepted ones build a model spec.

RECIPE_FUZZ_EXAMPLES sets the number of recipes (default 300 in the suite; 1000+ for a soak).
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from sparsetrain.config import LINEAR_KINDS, PRESETS, Config, ConfigError, from_dict, validate
from sparsetrain.models.family import model_spec
from sparsetrain.models.gpt import placeholder_layouts

EXAMPLES = int(os.environ.get("RECIPE_FUZZ_EXAMPLES", "300"))

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
ints = st.one_of(st.integers(-4, 4), st.sampled_from([16, 32, 48, 64, 96, 128, 256, 512, 768]), junk)
fracs = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0]), junk)


def maybe(fields: dict) -> st.SearchStrategy:
    """A dict holding any subset of `fields`, sometimes with an unknown key."""
    return st.fixed_dictionaries({}, optional={**fields, "bogus": junk})


linear = maybe({"density": fracs, "block": ints})
recipes = maybe({
    "model": st.one_of(junk, maybe({
        "preset": st.one_of(st.sampled_from(sorted(PRESETS)), junk),
        "n_layers": ints, "d_model": ints, "n_heads": ints, "context": ints, "n_kv_heads": ints,
        "dtype": st.one_of(st.sampled_from(["float32", "bfloat16", "float16"]), junk),
        "remat": st.one_of(st.booleans(), junk)})),
    "sparsity": st.one_of(junk, maybe({
        "pattern": st.one_of(st.sampled_from(["dense", "random_balanced", "butterfly", "x"]), junk),
        "density": fracs, "block": ints, **{k: st.one_of(linear, junk) for k in LINEAR_KINDS}})),
    "data": st.one_of(junk, maybe({
        "vocab_size": st.one_of(ints, st.sampled_from([32000, 128256])), "seq_len": ints, "batch_size": ints, "val_fraction": fracs,
        "dataset": st.one_of(st.sampled_from(["shakespeare", "/nonexistent/x.txt", "user/hub-set"]), junk),
        "tokenizer": st.one_of(st.just("bpe"), junk)})),
    "optimizer": st.one_of(junk, maybe({"lr": fracs, "beta1": fracs, "beta2": fracs, "eps": fracs,
                                        "weight_decay": fracs, "grad_clip": fracs, "warmup_steps": ints})),
    "run": st.one_of(junk, maybe({"steps": ints, "eval_every": ints, "log_every": ints,
                                  "wandb": st.one_of(st.sampled_from(["offline", "online", "cloud"]), junk),
                                  "backend": st.one_of(st.sampled_from(["xla", "rdu", "tpu"]), junk),
                                  "rdu_chip": st.one_of(st.sampled_from(["sn40l", "sn10", "sn99"]), junk),
                                  "nonfinite": st.one_of(st.sampled_from(["stop", "skip", "ignore"]), junk),
                                  "max_skipped_steps": ints, "keep_checkpoints": ints,
                                  "mesh_data": ints, "mesh_fsdp": ints, "mesh_tensor": ints,
                                  "name": st.one_of(st.text(max_size=6), junk)})),
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipes)
def test_any_recipe_is_accepted_or_refused_with_config_error(raw):
    try:
        cfg = from_dict(Config, raw)
        validate(cfg)
    except ConfigError as e:
        message = str(e)
        assert ":" in message and ("allowed" in message or "expected" in message or "exist" in message)
        return
    spec = model_spec(cfg)  # an accepted recipe must describe a buildable model (GPT or Llama)
    placeholder_layouts(spec)
    assert cfg.data.seq_len <= spec.shape.context
