"""Reports of an estimate: per-kernel markdown table, JSON, pipeline timeline and roofline PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rdu_xla_backend.cost.rdu import Options, ProgramPerf, program_perf


def kernel_rows(pp: ProgramPerf) -> list[dict]:
    """One dict per kernel with the reported quantities (seconds, FLOPs, bytes)."""
    total = sum(k.time_s for k in pp.kernels) or 1.0
    peak = pp.chip.peak_bf16_flops
    return [{
        "kernel": k.name, "phase": k.phase, "calls": k.calls, "trips": k.trips,
        "flops": k.flops, "time_s": k.time_s, "share": k.time_s / total,
        "achieved_flops": k.achieved_flops, "peak_fraction": k.achieved_flops / peak,
        "hbm_bytes": k.bytes.get("hbm", 0.0), "ddr_bytes": k.bytes.get("ddr", 0.0),
        "sram_bytes": k.bytes.get("sram", 0.0), "sram_per_tile_bytes": k.sram_per_tile,
        "pipeline_s": k.pipeline_s, "memory_s": k.memory_s, "network_s": k.network_s,
        "launch_s": k.launch_s, "tiles": k.tiles, "pcus": k.pcus, "pmus": k.pmus,
        "utilisation": k.utilisation, "gather_cycles": k.gather_cycles,
        "gather_conflicts": k.gather_conflicts, "bound": k.bound,
    } for k in pp.kernels]


def markdown_table(pp: ProgramPerf, max_rows: int = 40) -> str:
    """Per-kernel table (the ``max_rows`` slowest kernels when there are more, plus a total)."""
    rows = kernel_rows(pp)
    shown = rows if len(rows) <= max_rows else sorted(rows, key=lambda r: -r["time_s"])[:max_rows]
    head = ("| kernel | phase | trips | GFLOP | time ms | share | TFLOP/s | % peak | HBM GB | "
            "DDR GB | SRAM/tile KiB | PCUs | PMUs | util | bound |")
    lines = [head, "|" + "---|" * head.count("|")[:-1] if False else "|" + "---|" * 15]
    for r in shown:
        lines.append(
            f"| {r['kernel']} | {r['phase']} | {r['trips']} | {r['flops'] / 1e9:.4g} | "
            f"{r['time_s'] * 1e3:.4g} | {100 * r['share']:.1f}% | "
            f"{r['achieved_flops'] / 1e12:.4g} | {100 * r['peak_fraction']:.1f} | "
            f"{r['hbm_bytes'] / 1e9:.4g} | {r['ddr_bytes'] / 1e9:.4g} | "
            f"{r['sram_per_tile_bytes'] / 2**10:.4g} | {r['pcus']} | {r['pmus']} | "
            f"{r['utilisation']:.2f} | {r['bound']} |")
    t = sum(r["time_s"] for r in rows)
    f = sum(r["flops"] for r in rows)
    lines.append(f"| total ({len(rows)} kernels{', slowest shown' if len(rows) > max_rows else ''})"
                 f" | | | {f / 1e9:.4g} | {t * 1e3:.4g} | 100% | {f / t / 1e12 if t else 0:.4g} | "
                 f"{100 * f / t / pp.chip.peak_bf16_flops if t else 0:.1f} | "
                 f"{sum(r['hbm_bytes'] for r in rows) / 1e9:.4g} | "
                 f"{sum(r['ddr_bytes'] for r in rows) / 1e9:.4g} | | | | | {pp.bound} |")
    return "\n".join(lines)


def mechanisms(graph, chip, options: Options) -> dict:
    """Step time and kernel calls of ``graph`` with kernel looping on and off, each with
    hardware- and software-orchestrated launches (the same lowering; cheap after the first)."""
    import dataclasses

    out = {}
    for looping in (True, False):
        for orch in ("hardware", "software"):
            pp = program_perf(graph, chip, dataclasses.replace(
                options, kernel_looping=looping, orchestration=orch))
            out[f"looping_{'on' if looping else 'off'}_{orch}"] = {
                "step_s": pp.step_s, "launches": pp.launches}
    return out


def mechanism_lines(m: dict) -> list[str]:
    """Human-readable lines of ``mechanisms``: looping on vs off, hardware vs software launches."""
    lines = []
    for orch in ("hardware", "software"):
        on, off = m[f"looping_on_{orch}"], m[f"looping_off_{orch}"]
        lines.append(f"kernel looping, {orch}-orchestrated launches: on {on['step_s']:.4g} s "
                     f"({on['launches']:.4g} calls), off {off['step_s']:.4g} s "
                     f"({off['launches']:.4g} calls): looping {off['step_s'] / on['step_s']:.3g}x")
    for looping in ("on", "off"):
        hw_, sw = m[f"looping_{looping}_hardware"], m[f"looping_{looping}_software"]
        lines.append(f"launches with looping {looping}: hardware-orchestrated "
                     f"{hw_['step_s']:.4g} s vs software-orchestrated {sw['step_s']:.4g} s: "
                     f"{sw['step_s'] / hw_['step_s']:.3g}x")
    return lines


def to_json(pp: ProgramPerf, **extra) -> dict:
    """A JSON-ready dict of the estimate (kernels, totals, schedule, notes, ``extra``)."""
    out = {
        "chip": pp.chip.name, "options": pp.options.__dict__,
        "step_s": pp.step_s, "single_socket_s": pp.single_socket_s, "flops": pp.flops,
        "bound": pp.bound, "notes": pp.notes, "overflow_tensors": len(pp.overflow),
        "kernels": kernel_rows(pp),
    }
    if pp.schedule is not None:
        out["schedule"] = {"total_s": pp.schedule.total, "bubble_fraction":
                           pp.schedule.bubble_fraction, "schedule": pp.schedule.schedule}
    out.update(extra)
    return out


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def plot_timeline(pp: ProgramPerf, path: str | Path) -> Path:
    """Gantt chart: the micro-batch schedule per socket, or the kernels in order on one socket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3 + 0.3 * pp.options.sockets))
    s = pp.schedule
    if s is not None:
        P, M = s.forward_start.shape
        for p in range(P):
            for m in range(M):
                ax.barh(p, s.forward_end[p, m] - s.forward_start[p, m], left=s.forward_start[p, m],
                        color="tab:blue", edgecolor="white", linewidth=0.3)
                if s.backward_start is not None:
                    ax.barh(p, s.backward_end[p, m] - s.backward_start[p, m],
                            left=s.backward_start[p, m], color="tab:orange", edgecolor="white",
                            linewidth=0.3)
        ax.set_yticks(range(P), [f"socket {p}" for p in range(P)])
        ax.invert_yaxis()
        ax.set_title(f"{pp.chip.name}: {s.schedule}, {M} micro-batches, bubble "
                     f"{100 * s.bubble_fraction:.1f}% (blue forward, orange backward)")
    else:
        start = 0.0
        colors = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green"}
        for k in pp.kernels:
            ax.barh(0, k.time_s, left=start, color=colors.get(k.phase, "tab:gray"),
                    edgecolor="white", linewidth=0.3)
            if k.time_s > 0.04 * pp.single_socket_s:
                ax.text(start + k.time_s / 2, 0, k.name, ha="center", va="center", fontsize=7,
                        rotation=90 if k.time_s < 0.15 * pp.single_socket_s else 0)
            start += k.time_s
        ax.set_yticks([0], [pp.chip.name])
        ax.set_title(f"{pp.chip.name}: kernels in order (blue forward, orange backward, "
                     "green update)")
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_roofline(pp: ProgramPerf, path: str | Path) -> Path:
    """Each kernel a point: FLOPs per off-chip byte vs achieved FLOP/s, under the chip's roofs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chip = pp.chip
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(k.flops / max(k.offchip_bytes, 1.0), k.achieved_flops, k) for k in pp.kernels
           if k.flops > 0]
    xs = np.array([p[0] for p in pts] or [1.0])
    lo, hi = max(xs.min() / 10, 1e-2), max(xs.max() * 10, 1e4)
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(grid, np.full_like(grid, chip.peak_bf16_flops), "k-", label="peak BF16")
    for tier, bw, style in (("HBM", chip.hbm_bytes_per_s, "k--"), ("DDR", chip.ddr_bytes_per_s, "k:")):
        if bw:
            ax.loglog(grid, np.minimum(grid * bw, chip.peak_bf16_flops), style, label=f"{tier} roof")
    colors = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green"}
    for x, y, k in pts:
        ax.scatter(x, max(y, 1.0), color=colors.get(k.phase, "tab:gray"), s=25)
        if len(pts) <= 12:
            ax.annotate(k.name, (x, max(y, 1.0)), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("FLOPs per off-chip byte")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{chip.name} roofline, one point per kernel")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
