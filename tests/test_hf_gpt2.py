"""Pretrained GPT-2 in and out, against transformers' own numbers.

The fixture (tests/fixtures/hf-gpt2-tiny, written by scripts/make_hf_fixture.py with torch and
transformers) is a random GPT2LMHeadModel saved with `save_pretrained`, plus the logits and loss
transformers computed on fixed token ids. Here: our GPT on the imported weights gives those logits;
import -> export -> import is bit-exact; bad sources stop with one line and write nothing; greedy
KV-cache decoding equals the full forward's argmax; one-shot magnitude pruning + fine-tuning +
compare runs on the fixture; dropout is deterministic under the run's RNG.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from conftest import tiny_recipe
from sparsetrain.cli import main
from sparsetrain.evaluation.compare import compare_runs
from sparsetrain.config import ConfigError, load_recipe
from sparsetrain.evaluation import hf_gpt2
from sparsetrain.evaluation.generate import Generator
from sparsetrain.models.gpt import GPTSpec, LinearSpec, build_model, dropout
from sparsetrain.models.kv_cache import CachedDecoder
from sparsetrain.training.checkpoint import Checkpointer
from sparsetrain.training.loop import train
from sparsetrain.training.start import restore_run
from sparsetrain.training.step import build_setup, train_step_fn

FIXTURE = Path(__file__).parent / "fixtures" / "hf-gpt2-tiny"
RECIPE = Path(__file__).parents[1] / "recipes" / "gpt2-prune-finetune.yaml"
REFERENCE = np.load(FIXTURE / "reference.npz")


def data_overrides(corpus: Path, cache: Path) -> list[str]:
    return [f"data.dataset={corpus}", f"data.cache_dir={cache}", "data.seq_len=32", "data.batch_size=4"]


@pytest.fixture(scope="module")
def imported(text_corpus, tmp_path_factory) -> Path:
    """The fixture imported as a run directory, scored on the generated test corpus."""
    root = tmp_path_factory.mktemp("hf")
    out = root / "gpt2-tiny"
    hf_gpt2.import_run(str(FIXTURE), out, data_overrides(text_corpus, root / "cache"))
    return out


def fixture_model():
    hf = hf_gpt2.read_config(FIXTURE)
    cfg = hf_gpt2.imported_recipe(hf, Path("unused"))
    setup = build_setup(cfg, hf["vocab_size"], abstract=True)
    params = jax.tree.map(jnp.asarray, hf_gpt2.params_from_hf(hf_gpt2.read_weights(FIXTURE, hf), hf["n_layer"]))
    return setup, params


def test_our_logits_and_loss_equal_transformers_on_the_fixture():
    setup, params = fixture_model()
    tokens, ref = REFERENCE["tokens"], REFERENCE["logits"]
    logits = np.asarray(jax.jit(setup.fns.logits)(params, {}, tokens))
    assert np.abs(ref).max() > 1.0  # the random weights give logits far from uniform
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # transformers' loss: mean cross-entropy of token t+1 given tokens <= t
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()
    assert float(loss) == pytest.approx(float(REFERENCE["loss"]), rel=1e-5)


def test_import_export_import_is_bit_exact(imported, tmp_path):
    exported = hf_gpt2.export_run(imported, tmp_path / "exported")
    original, written = load_file(str(FIXTURE / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert set(written) == {n for n in original if not n.endswith((".attn.bias", ".attn.masked_bias"))}
    for name, array in written.items():
        assert array.dtype == np.float32 and np.array_equal(array.view(np.uint32), original[name].view(np.uint32)), name
    assert hf_gpt2.read_config(exported) == hf_gpt2.read_config(FIXTURE)
    again = hf_gpt2.import_run(str(exported), tmp_path / "again", [f"data.{k}={v}" for k, v in
                                                                    _data_section(imported).items()])
    assert again["fingerprint"] == json.loads((imported / "summary.json").read_text())["fingerprint"]
    a, b = restore_run(imported)[2]["params"], restore_run(tmp_path / "again")[2]["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))


def _data_section(run: Path) -> dict:
    data = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
    return {k: data[k] for k in ("dataset", "cache_dir", "seq_len", "batch_size")}


def test_exported_directory_loads_in_transformers(imported, tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (not a sparsetrain dependency); "
        "`pip install torch transformers` to check that exported directories load as GPT2LMHeadModel")
    import torch

    exported = hf_gpt2.export_run(imported, tmp_path / "exported")
    model = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(REFERENCE["tokens"]).long()).logits.numpy()
    np.testing.assert_allclose(theirs, REFERENCE["logits"], rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert tok.eos_token == "<|endoftext|>" and len(tok) == 320


def test_the_hub_gpt2_layout_is_read_the_same(tmp_path):
    """openai-community/gpt2 saves GPT2Model names (no `transformer.`), the causal-mask buffers
    `h.{i}.attn.bias`, and only vocab.json + merges.txt in older snapshots."""
    src = tmp_path / "hub"
    shutil.copytree(FIXTURE, src)
    tensors = load_file(str(src / "model.safetensors"))
    hub = {n.removeprefix("transformer."): a for n, a in tensors.items()}
    hub.update({f"h.{i}.attn.bias": np.tril(np.ones((1, 1, 64, 64), np.float32)) for i in range(2)})
    save_file(hub, str(src / "model.safetensors"))
    tok = json.loads((FIXTURE / "tokenizer.json").read_text())["model"]
    (src / "vocab.json").write_text(json.dumps(tok["vocab"]))
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(
        m if isinstance(m, str) else " ".join(m) for m in tok["merges"]) + "\n")
    (src / "tokenizer.json").unlink()
    hf = hf_gpt2.read_config(src)
    ours, theirs = hf_gpt2.read_weights(src, hf), hf_gpt2.read_weights(FIXTURE, hf)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    text = "Shall I compare thee to a summer's day?"
    assert (hf_gpt2.read_tokenizer(src, 320).encode(text).ids
            == hf_gpt2.read_tokenizer(FIXTURE, 320).encode(text).ids)


def _edit_config(src: Path, **changes) -> None:
    path = src / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


BAD_SOURCES = {
    "missing file": (lambda s: (s / "model.safetensors").unlink(), "model.safetensors: missing"),
    "wrong architecture": (lambda s: _edit_config(s, model_type="llama", architectures=["LlamaForCausalLM"]),
                           "model_type 'llama' is not supported"),
    "other activation": (lambda s: _edit_config(s, activation_function="relu"), "activation_function='relu'"),
    "mismatched shapes": (lambda s: _edit_config(s, n_positions=32),
                          "tensor 'transformer.wpe.weight' has shape (64, 128); config.json implies (32, 128)"),
    "vocabulary": (lambda s: _edit_config(s, vocab_size=321),
                   "vocabulary of 320 tokens does not match config.json vocab_size=321"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_a_bad_source_stops_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    corrupt, message = BAD_SOURCES[case]
    corrupt(src)
    out = tmp_path / "runs" / "imported"
    assert main(["import-hf", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # neither --out nor a temporary sibling


def _greedy_matches_full_forward(model, prompt: list[int], n_new: int) -> None:
    gen = Generator(model).sample(prompt, n_new, temperature=0.0, n_samples=2)
    assert (gen[0] == gen[1]).all()
    full = np.array([prompt + gen[0].tolist()], np.int32)
    logits = np.asarray(jax.jit(lambda t: model(t))(full))[0]
    expected = logits[len(prompt) - 1: -1].argmax(-1)
    margin = np.sort(logits[len(prompt) - 1: -1], -1)
    assert (margin[:, -1] - margin[:, -2]).min() > 1e-4  # no near-ties: the argmax is well defined
    assert gen[0].tolist() == expected.tolist()


def test_greedy_kv_cache_decoding_equals_the_full_forward_argmax_dense_and_sparse():
    setup, params = fixture_model()
    dense = CachedDecoder(setup.model).model(params, {})
    _greedy_matches_full_forward(dense, [5, 17, 200, 3], 20)
    spec = dataclasses.replace(setup.spec, linears=tuple(
        (kind, LinearSpec(lin.n_in, lin.n_out, 0.25, 16)) for kind, lin in setup.spec.linears),
        pattern="random_balanced")
    _greedy_matches_full_forward(build_model(spec, seed=1), [5, 17, 200, 3], 20)


def test_prune_finetune_compare_on_the_fixture(imported, text_corpus, tmp_path):
    overrides = [*(f"data.{k}={v}" for k, v in _data_section(imported).items()),
                 "model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.context=64",
                 "sparsity.block=16", f"sparsity.init_from={imported}",
                 f"data.tokenizer={imported / 'tokenizer.json'}", "data.vocab_size=320",
                 "run.steps=2", "run.eval_every=2", "run.eval_batches=2", "run.checkpoint_every=2",
                 "run.wandb=disabled", "run.progress=false", f"run.out_dir={tmp_path / 'pruned'}"]
    cfg = load_recipe(RECIPE, overrides)
    assert cfg.sparsity.pattern == "magnitude" and cfg.sparsity.density == 0.125
    assert cfg.model.attn_dropout == 0.1  # GPT-2's fine-tuning dropout
    train(cfg)
    _, setup, state, _ = restore_run(cfg.out_dir)
    dense = restore_run(imported)[2]["params"]["layers"]
    for kind, lin in setup.spec.linears:  # the stored blocks: each column's 1/8 largest-norm blocks
        w = np.asarray(dense[kind]["kernel"], np.float64)            # (L, n_in, n_out)
        L, n_in, n_out = w.shape
        k = n_in // 16 // 8
        norms = np.sqrt((w.reshape(L, n_in // 16, 16, n_out // 16, 16) ** 2).sum((2, 4)))  # (L, rows, cols)
        rows = np.sort(np.asarray(state["indices"]["layers"][kind]["row_indices"]), -1)
        assert rows.shape == (L, n_out // 16, k)
        np.testing.assert_array_equal(rows, np.sort(np.argsort(-norms, 1)[:, :k].transpose(0, 2, 1), -1))
    result = compare_runs([imported, cfg.out_dir], max_batches=2)
    base, pruned = result["rows"]
    assert result["baseline"] == base["run"] and pruned["flops_vs_base"] is None
    linear = sum(lin.n_in * lin.n_out for _, lin in setup.spec.linears) * 2
    assert base["params_stored"] - pruned["params_stored"] == linear * 7 // 8


def test_dropout_drops_at_the_rate_and_keeps_the_mean():
    x = jnp.ones((200_000,))
    y = np.asarray(dropout(x, 0.1, jax.random.key(0)))
    assert abs((y == 0).mean() - 0.1) < 0.003 and set(np.unique(y)) == {0.0, np.float32(1 / 0.9)}
    assert dropout(x, 0.1, None) is x


def test_dropout_steps_are_deterministic_under_the_checkpointed_rng(text_corpus, tmp_path):
    """A step's dropout masks come from the state's rng: a state saved and restored (a resume)
    steps to bitwise the same parameters; the masks change from step to step and really drop."""
    extra = {"model": {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 2, "context": 32,
                       "embd_dropout": 0.1, "attn_dropout": 0.1, "resid_dropout": 0.1}}
    cfg = load_recipe(tiny_recipe(tmp_path, text_corpus, sparse=False, **extra))
    setup = build_setup(cfg, 300)
    step = jax.jit(train_step_fn(setup.fns, setup.tx, setup.schedule, setup.flow))
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 300, (4, 32), dtype=np.int32),
             "targets": rng.integers(0, 300, (4, 32), dtype=np.int32)}
    after_one, m1 = step(setup.state, batch)
    ckpt = Checkpointer(tmp_path / "ckpt", keep_last=2)
    ckpt.save(1, after_one, {"step": 1}, val_loss=0.0)
    restored, _ = ckpt.restore(1, build_setup(cfg, 300, abstract=True).state)
    ckpt.close()
    a, b = step(after_one, batch)[0], step(restored, batch)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    loss = step(after_one, batch)[1]["loss"]
    loss_fn = jax.jit(setup.fns.loss)
    key = jax.random.split(jax.random.wrap_key_data(after_one["rng"]))[1]  # what the step draws
    same = float(loss_fn(after_one["params"], after_one["indices"], batch, key))
    other = float(loss_fn(after_one["params"], after_one["indices"], batch, jax.random.key(7)))
    assert float(loss) == pytest.approx(same, rel=1e-6)  # another compile: float32 rounding only
    assert abs(float(loss) - other) > 1e-3
    assert float(m1["loss"]) != float(loss)  # masks (and weights) change from step to step


def test_dropout_rates_are_validated(tmp_path, text_corpus):
    with pytest.raises(ConfigError, match=r"model.attn_dropout: 1.0 is not allowed; allowed: a rate in \[0, 1\)"):
        load_recipe(tiny_recipe(tmp_path, text_corpus), ["model.attn_dropout=1.0"])
