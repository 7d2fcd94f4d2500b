"""Compare runs against a dense baseline: one table (markdown + JSON) and a plot, W&B optional.

    sparsetrain compare RUN [RUN ...] [--baseline NAME] [--out DIR] [--batches N]

Every run is evaluated on its newest checkpoint that restores with `evaluate.py` (val loss, bits
per byte); its recipe is that checkpoint's own (recipe.yaml, a copy for people, is not read).
The table lists stored parameters, training FLOPs (the work the kernels did: stored blocks only),
tokens, wall time, val loss, bits per byte, and the difference to the baseline (by default the
first dense run). Runs whose tokenizer or validation windows differ (data fingerprints differ)
are refused: their losses are not comparable and must not look comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparsetrain.errors import DamagedFileError
from sparsetrain.evaluation.evaluate import evaluate_run
from sparsetrain.training.tracking import read_jsonl, resolve_wandb_mode


class ComparisonError(ValueError):
    """The runs cannot be compared fairly."""


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ComparisonError(f"{run_dir}: no summary.json (the run did not finish); nothing to compare")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        summary = e
    if not isinstance(summary, dict) or not {"run", "steps", "tokens"} <= summary.keys():
        raise DamagedFileError(f"{path}: damaged (not a run summary); restore it from a backup (compare "
                               "tabulates its numbers; the checkpoints are intact and `sparsetrain eval "
                               f"{run_dir}` evaluates the run without it)")
    return summary


def check_same_data(summaries: dict[str, dict]) -> str:
    """The common data fingerprint of the runs; ComparisonError naming the odd ones out."""
    prints = {run: s.get("fingerprint") for run, s in summaries.items()}
    first_run, first = next(iter(prints.items()))
    odd = {run: fp for run, fp in prints.items() if fp != first}
    if odd:
        listing = ", ".join(f"{run} ({str(fp)[:12]})" for run, fp in odd.items())
        raise ComparisonError(
            f"runs were evaluated on different data: {listing} differ from {first_run} ({str(first)[:12]}) in "
            "tokenizer or validation windows; losses would not be comparable. Train them with the same "
            "data section (dataset, tokenizer, vocab_size, seq_len, val_fraction, seed)")
    return first


def curve(run_dir: Path, summary: dict) -> list[dict]:
    """(step, tokens, train_flops, val_loss) of every evaluation logged by the run."""
    tokens_per_step = summary["tokens"] / max(summary["steps"], 1)
    flops_per_token = summary["train_flops_effective"] / max(summary["tokens"], 1)
    rows = []
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if "val_loss" in r:
            tokens = r.get("tokens", r["step"] * tokens_per_step)
            rows.append({"step": r["step"], "tokens": tokens, "val_loss": r["val_loss"],
                         "train_flops": r.get("train_flops", tokens * flops_per_token)})
    return rows


def compare_runs(run_dirs: list[str | Path], baseline: str | None = None, max_batches: int | None = None) -> dict:
    """Evaluate and tabulate runs. Returns {"baseline", "fingerprint", "rows": [...], "curves"}."""
    dirs = [Path(d) for d in run_dirs]
    summaries = {str(d): _summary(d) for d in dirs}
    fingerprint = check_same_data(summaries)  # before any evaluation work
    logged = {str(d): curve(d, summaries[str(d)]) for d in dirs}  # read (or refused) before evaluating
    rows, curves = [], {}
    for d in dirs:
        s = summaries[str(d)]
        ev = evaluate_run(d, max_batches=max_batches, n_samples=0)
        recipe = ev["recipe"]  # the evaluated checkpoint's own (recipe.yaml is a copy for people)
        sp = recipe.get("sparsity", {})
        name = s["run"] if s["run"] not in [r["run"] for r in rows] else str(d)
        rows.append({
            "run": name, "dir": str(d), "pattern": sp.get("pattern"), "flow": s.get("flow", "static"),
            "init_from": sp.get("init_from"), "params_stored": int(s.get("params_alive", s["params_stored"])),
            "train_flops": float(s["train_flops_effective"]), "tokens": int(s["tokens"]),
            "wall_time_s": float(s["wall_time_s"]), "val_loss": ev["val_loss"],
            "bits_per_byte": ev["bits_per_byte"], "eval_tokens": ev["tokens"], "step": ev["step"],
            "wandb": recipe.get("run", {}).get("wandb", "disabled"),
            "wandb_project": recipe.get("run", {}).get("wandb_project", "sparsetrain"),
        })
        curves[name] = logged[str(d)]
    base = _pick_baseline(rows, baseline)
    for r in rows:
        if base is not None:
            r["val_loss_vs_base"] = r["val_loss"] - base["val_loss"]
            r["val_loss_vs_base_pct"] = 100.0 * (r["val_loss"] / base["val_loss"] - 1.0)
            r["bpb_vs_base"] = r["bits_per_byte"] - base["bits_per_byte"]
            # an imported (pretrained elsewhere) baseline did no training here: no FLOPs ratio
            r["flops_vs_base"] = r["train_flops"] / base["train_flops"] if base["train_flops"] else None
            r["params_vs_base"] = r["params_stored"] / base["params_stored"]
    return {"baseline": base["run"] if base else None, "fingerprint": fingerprint, "rows": rows,
            "curves": curves, "batches": max_batches}


def _pick_baseline(rows: list[dict], name: str | None) -> dict | None:
    if name is not None:
        for r in rows:
            if name in (r["run"], r["dir"]):
                return r
        raise ComparisonError(f"--baseline: {name!r} is not one of the runs ({', '.join(r['run'] for r in rows)})")
    dense = [r for r in rows if r["pattern"] == "dense" and not r["init_from"]]
    return dense[0] if dense else None


def markdown_table(result: dict) -> str:
    base = result["baseline"]
    head = ["run", "flow", "params stored", "train FLOPs", "tokens", "wall (s)", "val loss", "bits/byte"]
    if base:
        head += [f"val loss vs {base}", f"FLOPs vs {base}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        flow = r["flow"] + (" (from checkpoint)" if r["init_from"] else "")
        cells = [r["run"], flow, f"{r['params_stored']:,}", f"{r['train_flops']:.3g}", f"{r['tokens']:,}",
                 f"{r['wall_time_s']:.0f}", f"{r['val_loss']:.4f}", f"{r['bits_per_byte']:.4f}"]
        if base:
            cells += [f"{r['val_loss_vs_base']:+.4f} ({r['val_loss_vs_base_pct']:+.1f}%)",
                      "n/a" if r["flops_vs_base"] is None else f"{r['flops_vs_base']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", caption(result)]
    return "\n".join(lines)


def caption(result: dict) -> str:
    """What the table's losses are, and how they differ from the plot's curves."""
    tokens = sorted({r["eval_tokens"] for r in result["rows"]})
    scope = (f"{tokens[0]:,} validation tokens" if len(tokens) == 1
             else f"{tokens[0]:,}-{tokens[-1]:,} validation tokens")
    return (f"val loss and bits/byte: each run's newest checkpoint re-evaluated now on {scope} "
            f"({'the first --batches batches' if result.get('batches') else 'the whole split'}). "
            "The plot's lines are the evaluations logged during training (run.eval_batches "
            "batches each); its stars are these re-evaluated values.")


def plot_curves(result: dict, path: Path) -> Path:
    """PNG: val loss against tokens (left) and against training FLOPs (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in result["curves"].items():
        if not rows:
            continue
        for ax, x in zip(axes, ("tokens", "train_flops")):
            line, = ax.plot([r[x] for r in rows], [r["val_loss"] for r in rows], marker="o", ms=3,
                            label=f"{name} (during training)")
            final = next(r for r in result["rows"] if r["run"] == name)
            ax.plot([final[x]], [final["val_loss"]], marker="*", ms=12, ls="none",
                    color=line.get_color(), label=f"{name} (final, re-evaluated)")
    axes[0].set_xlabel("training tokens")
    axes[1].set_xlabel("training FLOPs (stored blocks only)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("val loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """compare.md, compare.json and val_loss.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "compare.md", "json": out / "compare.json", "png": out / "val_loss.png"}
    paths["markdown"].write_text(markdown_table(result) + "\n")
    paths["json"].write_text(json.dumps(result, indent=2))
    plot_curves(result, paths["png"])
    return paths


def log_to_wandb(result: dict, paths: dict[str, Path], out: Path) -> str | None:
    """Log the table and the plot to a W&B run when any compared run tracked with W&B."""
    modes = [r["wandb"] for r in result["rows"] if r["wandb"] != "disabled"]
    if not modes:
        return None
    import wandb

    mode = resolve_wandb_mode("online" if "online" in modes else "offline")
    run = wandb.init(project=result["rows"][0]["wandb_project"], name="compare", mode=mode, dir=str(out),
                     job_type="compare", settings=wandb.Settings(silent=True))
    columns = ["run", "flow", "params_stored", "train_flops", "tokens", "wall_time_s", "val_loss", "bits_per_byte"]
    table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in result["rows"]])
    run.log({"comparison": table, "val_loss_curves": wandb.Image(str(paths["png"]))})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir
