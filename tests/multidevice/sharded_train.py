"""The real `train()` of a tiny sparse GPT on 1 device, and on a 2x2x2 mesh for 2 steps, saved there
and resumed on a 1x4x1 mesh (a different device count) for 2 more. Prints both loss sequences as JSON.
Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts (run by a test)."""

import json
import random
import tempfile
from pathlib import Path

from sparsetrain.config import load_recipe
from sparsetrain.kernels.dispatch import use_kernel_backend
from sparsetrain.training.tracking import read_jsonl
from sparsetrain.training.loop import train

root = Path(tempfile.mkdtemp())
words = "the king queen lord lady sword crown night day love death war peace heart".split()
rng = random.Random(0)
(root / "corpus").mkdir()
for i in range(12):
    (root / "corpus" / f"d{i}.txt").write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(120)))
recipe = root / "r.yaml"
recipe.write_text(f"""
model: {{preset: tiny, n_layers: 1, d_model: 64, n_heads: 4, context: 8}}
sparsity: {{pattern: random_balanced, density: 0.5, block: 16}}
data: {{dataset: {root / 'corpus'}, vocab_size: 300, seq_len: 8, batch_size: 8, cache_dir: {root / 'cache'}}}
optimizer: {{lr: 0.01, warmup_steps: 2}}
run: {{steps: 4, eval_every: 2, eval_batches: 1, log_every: 1, checkpoint_every: 2, wandb: disabled, progress: false}}
""")


def losses(name, mesh, stop_after=None, resume=False):
    d, f, t = mesh
    cfg = load_recipe(recipe, [f"run.name={name}", f"run.out_dir={root / name}", f"run.mesh_data={d}",
                               f"run.mesh_fsdp={f}", f"run.mesh_tensor={t}"])
    train(cfg, stop_after=stop_after, resume=resume)
    return [r["loss"] for r in read_jsonl(root / name / "metrics.jsonl")]


with use_kernel_backend("ffi"):  # one device: the compiled kernels, as on the meshes below
    single = losses("single", (1, 1, 1))
losses("moved", (2, 2, 2), stop_after=2)
moved = losses("moved", (1, 4, 1), resume=True)
print(json.dumps({"single": single, "moved": moved}))
