"""Presets carry the shapes of the GPT-2 / GPT-3 papers; linear_shapes matches the layer math."""

import pytest

from sparsetrain.config.presets import PRESETS, linear_shapes

# (layers, width, heads, context) from GPT-2 (Radford et al. 2019, Table 2) and GPT-3 (Brown et al.
# 2020, Table 2.1; 1.3B uses 16 heads of 128 and 13B width 5120, as the module explains).
PAPER = {
    "gpt2-small": (12, 768, 12, 1024), "gpt2-medium": (24, 1024, 16, 1024),
    "gpt2-large": (36, 1280, 20, 1024), "gpt2-xl": (48, 1600, 25, 1024),
    "gpt3-2.7b": (32, 2560, 32, 2048), "gpt3-6.7b": (32, 4096, 32, 2048),
    "gpt3-13b": (40, 5120, 40, 2048),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_gpt_presets_have_the_paper_shapes(name):
    s = PRESETS[name]
    assert (s.n_layers, s.d_model, s.n_heads, s.context) == PAPER[name]
    assert s.family == "gpt" and s.d_ff == 4 * s.d_model


def test_linear_shapes_gpt_and_llama():
    d = PRESETS["gpt2-small"].d_model
    assert linear_shapes(PRESETS["gpt2-small"]) == {
        "qkv": (d, 3 * d), "attn_out": (d, d), "mlp_up": (d, 4 * d), "mlp_down": (4 * d, d)}
    llama = PRESETS["llama3.1-8b"]  # 32 query heads + 2 x 8 key/value heads of 128; SwiGLU 14336
    shapes = linear_shapes(llama)
    assert shapes["qkv"] == (4096, (32 + 16) * 128)
    assert shapes["mlp_up"] == (4096, 2 * 14336) and shapes["mlp_down"] == (14336, 4096)
