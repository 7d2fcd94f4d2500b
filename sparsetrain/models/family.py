"""Which model a recipe builds: a GPT or a Llama-style decoder, chosen by the preset's family.

`model_spec(cfg)` gives a `GPTSpec` or a `LlamaSpec`; `build_model` and `abstract_model` accept
either (so do `accounting.model_counts` and `kv_cache`).
"""

from __future__ import annotations

from sparsetrain.config import Config
from sparsetrain.models import gpt, llama

ModelSpec = gpt.GPTSpec | llama.LlamaSpec


def model_spec(cfg: Config, vocab_size: int | None = None) -> ModelSpec:
    """The static description of the recipe's model (vocabulary: `vocab_size`, else the preset's
    published one, else data.vocab_size)."""
    if cfg.shape().family == "llama":
        return llama.LlamaSpec.from_config(cfg, vocab_size)
    return gpt.GPTSpec.from_config(cfg, vocab_size)


def build_model(spec: ModelSpec, seed: int):
    """A freshly initialised model with real weights."""
    if isinstance(spec, llama.LlamaSpec):
        return llama.build_llama(spec, seed)
    return gpt.build_model(spec, seed)


def abstract_model(spec: ModelSpec):
    """The model with ShapeDtypeStruct parameters: nothing allocated."""
    if isinstance(spec, llama.LlamaSpec):
        return llama.abstract_llama(spec)
    return gpt.abstract_model(spec)

