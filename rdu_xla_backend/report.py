"""Reports of an estimate: per-kernel markdown table, JSON, pipeline timeline and roofline PNGs.

Every kernel row says what limits it (``limit``), not only which term of the timing model is
largest: a pipeline-bound kernel far below peak is limited by its fill and drain (few tiles), by
one slow stage while the other units idle (stage imbalance), or by its compute; a kernel whose
launch gaps and first-access latency exceed its work is limited by launch or latency. Kernels
whose working set per tile spans several tile buffers are explained in ``sram_notes``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from rdu_xla_backend.cost.rdu import KernelPerf, Options, ProgramPerf, program_perf

# A pipeline-bound kernel below this fraction of peak with fewer units busy than this is
# reported as limited by one stage (stage imbalance), not by the chip's compute.
IMBALANCE_PEAK_FRACTION = 0.05
IMBALANCE_UTILISATION = 0.10
PHASE_COLORS = {"forward": "tab:blue", "backward": "tab:orange", "update": "tab:green"}


def limit(k: KernelPerf, work, pp: ProgramPerf) -> str:
    """What limits kernel ``k`` (timed from ``work``, a ``KernelWork`` or None), in words.

    - 'launch' / 'latency': launch gaps (or first off-chip access latencies) exceed the work.
    - 'hbm', 'ddr', 'host', 'network': streaming that tier (or the collectives) takes longest.
    - pipeline-bound: 'fill/drain (N tiles)' when a trip's fill and drain exceed its steady
      part; 'stage imbalance (stage)' when under 5% of peak with under 10% of the allocated
      units busy; else 'compute' (PCU stage) or 'sram' (PMU stage).
    """
    chip, opt = pp.chip, pp.options
    if k.bound == "launch":
        gap = (chip.launch_seconds_software if opt.orchestration == "software"
               else chip.launch_seconds_hardware)
        gaps = k.launches * gap
        return "launch" if gaps >= k.launch_s - gaps else "latency"
    if k.bound not in ("compute", "sram") or work is None:
        return k.bound
    steady = max(k.tiles - 1, 0) * work.interval
    if work.fill + work.drain > steady:
        return f"fill/drain ({k.tiles} tiles)"
    peak_fraction = k.achieved_flops / chip.peak_bf16_flops
    if peak_fraction < IMBALANCE_PEAK_FRACTION and k.utilisation < IMBALANCE_UTILISATION:
        shares = k.stage_share or [0.0]
        name = k.stage_names[int(np.argmax(shares))] if k.stage_names else "?"
        return f"stage imbalance ({name})"
    return k.bound


def kernel_rows(pp: ProgramPerf) -> list[dict]:
    """One dict per kernel with the reported quantities (seconds, FLOPs, bytes)."""
    total = sum(k.time_s for k in pp.kernels) or 1.0
    peak = pp.chip.peak_bf16_flops
    works = pp.works if len(pp.works) == len(pp.kernels) else [None] * len(pp.kernels)
    return [{
        "kernel": k.name, "phase": k.phase, "calls": k.calls, "trips": k.trips,
        "flops": k.flops, "time_s": k.time_s, "share": k.time_s / total,
        "achieved_flops": k.achieved_flops, "peak_fraction": k.achieved_flops / peak,
        "hbm_bytes": k.bytes.get("hbm", 0.0), "ddr_bytes": k.bytes.get("ddr", 0.0),
        "sram_bytes": k.bytes.get("sram", 0.0), "sram_per_tile_bytes": k.sram_per_tile,
        "pipeline_s": k.pipeline_s, "memory_s": k.memory_s, "network_s": k.network_s,
        "launch_s": k.launch_s, "tiles": k.tiles, "pcus": k.pcus, "pmus": k.pmus,
        "utilisation": k.utilisation, "gather_cycles": k.gather_cycles,
        "gather_conflicts": k.gather_conflicts, "bound": k.bound, "limit": limit(k, w, pp),
    } for k, w in zip(pp.kernels, works)]


def markdown_table(pp: ProgramPerf, max_rows: int = 40) -> str:
    """Per-kernel table (the ``max_rows`` slowest kernels when there are more, plus a total)."""
    rows = kernel_rows(pp)
    shown = rows if len(rows) <= max_rows else sorted(rows, key=lambda r: -r["time_s"])[:max_rows]
    head = ("| kernel | phase | trips | GFLOP | time ms | share | TFLOP/s | % peak | HBM GB | "
            "DDR GB | SRAM/tile KiB | PCUs | PMUs | util | limited by |")
    lines = [head, "|" + "---|" * 15]
    for r in shown:
        lines.append(
            f"| {r['kernel']} | {r['phase']} | {r['trips']} | {r['flops'] / 1e9:.4g} | "
            f"{r['time_s'] * 1e3:.4g} | {100 * r['share']:.1f}% | "
            f"{r['achieved_flops'] / 1e12:.4g} | {100 * r['peak_fraction']:.1f} | "
            f"{r['hbm_bytes'] / 1e9:.4g} | {r['ddr_bytes'] / 1e9:.4g} | "
            f"{r['sram_per_tile_bytes'] / 2**10:.4g} | {r['pcus']} | {r['pmus']} | "
            f"{r['utilisation']:.2f} | {r['limit']} |")
    t = sum(r["time_s"] for r in rows)
    f = sum(r["flops"] for r in rows)
    lines.append(f"| total ({len(rows)} kernels{', slowest shown' if len(rows) > max_rows else ''})"
                 f" | | | {f / 1e9:.4g} | {t * 1e3:.4g} | 100% | {f / t / 1e12 if t else 0:.4g} | "
                 f"{100 * f / t / pp.chip.peak_bf16_flops if t else 0:.1f} | "
                 f"{sum(r['hbm_bytes'] for r in rows) / 1e9:.4g} | "
                 f"{sum(r['ddr_bytes'] for r in rows) / 1e9:.4g} | | | | | {pp.bound} |")
    return "\n".join(lines)


def mechanisms(graph, chip, options: Options, plan=None) -> dict:
    """Step time and kernel calls of ``graph`` with kernel looping on and off, each with
    hardware- and software-orchestrated launches (the same lowering and, when given, the same
    parallel ``plan``, re-timed: cheap after the first)."""
    out = {}
    for looping in (True, False):
        for orch in ("hardware", "software"):
            pp = program_perf(graph, chip, dataclasses.replace(
                options, kernel_looping=looping, orchestration=orch,
                plan=plan if plan is not None else options.plan))
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
                           pp.schedule.bubble_fraction, "schedule": pp.schedule.schedule,
                           "virtual_stages": pp.schedule.virtual_stages}
    if pp.plan is not None:
        t = pp.plan
        out["plan"] = {**dataclasses.asdict(t.plan), "step_s": t.step_s, "update_s": t.update_s,
                       "allreduce_s": t.allreduce_s, "transfer_s": t.transfer_s,
                       "forward_s": t.forward_s, "backward_s": t.backward_s,
                       "memory_per_socket": t.memory, "description": t.plan.describe(
                           pp.options.batch)}
    out.update(extra)
    return out


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def _title(pp: ProgramPerf) -> str:
    """The chip, socket count and plan of an estimate, for figure titles."""
    n = pp.options.sockets
    head = f"{pp.chip.name} x{n}" if n > 1 else pp.chip.name
    if pp.plan is not None:
        p = pp.plan.plan
        head += f" (TP {p.tensor} x PP {p.pipeline} x DP {p.data})"
    elif n > 1:
        head += f" ({pp.options.parallel} parallel)"
    return head


def _phase_legend(ax, phases) -> None:
    import matplotlib.patches as mpatches

    ax.legend(handles=[mpatches.Patch(color=PHASE_COLORS.get(p, "tab:gray"), label=p)
                       for p in PHASE_COLORS if p in phases], fontsize=8, loc="lower right")


def plot_timeline(pp: ProgramPerf, path: str | Path) -> Path:
    """Gantt chart: the micro-batch schedule per pipeline socket, or the kernels in order on
    one socket. Only the phases the program has are named (a decode has no backward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = pp.schedule
    rows = s.sockets if s is not None else 1
    fig, ax = plt.subplots(figsize=(10, 2.5 + 0.3 * rows))
    if s is not None:
        V, M = s.forward_start.shape
        spans = [("forward", s.forward_start, s.forward_end)]
        if s.backward_start is not None:
            spans.append(("backward", s.backward_start, s.backward_end))
        for phase, start, end in spans:
            for j in range(V):
                ax.broken_barh([(start[j, m], end[j, m] - start[j, m]) for m in range(M)],
                               (j % rows - 0.4, 0.8), facecolors=PHASE_COLORS[phase],
                               edgecolor="white", linewidth=0.3)
        ax.set_yticks(range(rows), [f"socket {p}" for p in range(rows)])
        ax.invert_yaxis()
        p = pp.plan.plan
        ax.set_title(f"{_title(pp)}: {s.schedule}"
                     f"{f' interleaved x{s.virtual_stages}' if s.virtual_stages > 1 else ''}, "
                     f"{M} micro-batches, bubble {100 * s.bubble_fraction:.1f}%, layers per "
                     f"stage {list(p.layers)}", fontsize=9)
        _phase_legend(ax, [x[0] for x in spans])
    else:
        start = 0.0
        for k in pp.kernels:
            ax.barh(0, k.time_s, left=start, color=PHASE_COLORS.get(k.phase, "tab:gray"),
                    edgecolor="white", linewidth=0.3)
            total = sum(x.time_s for x in pp.kernels)
            if k.time_s > 0.04 * total:
                ax.text(start + k.time_s / 2, 0, k.name, ha="center", va="center", fontsize=7,
                        rotation=90 if k.time_s < 0.15 * total else 0)
            start += k.time_s
        ax.set_yticks([0], [pp.chip.name])
        what = "kernels in order on one socket"
        if pp.plan is not None and pp.plan.plan.micro_batches > 1:
            what += f", each summed over {pp.plan.plan.micro_batches} micro-batches"
        ax.set_title(f"{_title(pp)}: {what}", fontsize=9)
        _phase_legend(ax, {k.phase for k in pp.kernels})
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


LABEL_OFFSETS = tuple((dx, dy) for dy in (3, -12, 16, -24, 28, -36, 40, -48, 52, -60, 64, -72)
                      for dx in (5, -5))  # points, nearest first


def _overlap(a: tuple, b: tuple) -> float:
    """Area shared by two boxes (x0, y0, x1, y1)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(points: np.ndarray, sizes: np.ndarray, bounds: tuple | None = None,
                 offsets: tuple = LABEL_OFFSETS) -> list:
    """Greedy label placement: for each point (in points), the first offset whose label box
    (width, height; left-anchored for a positive x offset, right-anchored otherwise) overlaps no
    marker and no label placed before and lies inside ``bounds`` (x0, y0, x1, y1: the axes);
    when none is free, the one overlapping least. Returns [(dx, dy, ha)]."""
    boxes = [(x - 4, y - 4, x + 4, y + 4) for x, y in points]  # the markers themselves
    out = []
    for (x, y), (w, h) in zip(points, sizes):
        best = None
        for dx, dy in offsets:
            x0 = x + dx if dx >= 0 else x + dx - w
            box = (x0, y + dy, x0 + w, y + dy + h)
            cost = sum(_overlap(box, b) for b in boxes)
            if bounds is not None:
                inside = (max(box[0], bounds[0]), max(box[1], bounds[1]),
                          min(box[2], bounds[2]), min(box[3], bounds[3]))
                cost += w * h - max(0.0, inside[2] - inside[0]) * max(0.0, inside[3] - inside[1])
            if best is None or cost < best[0]:
                best = (cost, dx, dy, box)
            if cost == 0:
                break
        boxes.append(best[3])
        out.append((best[1], best[2], "left" if best[1] >= 0 else "right"))
    return out


def plot_roofline(pp: ProgramPerf, path: str | Path) -> Path:
    """Each kernel a point: FLOPs per off-chip byte vs achieved FLOP/s, under the chip's roofs;
    labels placed so that none overlaps another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chip = pp.chip
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(k.flops / max(k.offchip_bytes, 1.0), max(k.achieved_flops, 1.0), k)
           for k in pp.kernels if k.flops > 0]
    xs = np.array([p[0] for p in pts] or [1.0])
    lo, hi = max(xs.min() / 10, 1e-6), max(xs.max() * 10, 1e4)
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(grid, np.full_like(grid, chip.peak_bf16_flops), "k-", label="peak BF16")
    for tier, bw, style in (("HBM", chip.hbm_bytes_per_s, "k--"),
                            ("DDR", chip.ddr_bytes_per_s, "k:")):
        if bw:
            ax.loglog(grid, np.minimum(grid * bw, chip.peak_bf16_flops), style,
                      label=f"{tier} roof")
    for x, y, k in pts:
        ax.scatter(x, y, color=PHASE_COLORS.get(k.phase, "tab:gray"), s=25, zorder=3)
    ax.set_xlabel("FLOPs per off-chip byte")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{_title(pp)} roofline, one point per kernel", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()  # before placing labels: it moves the axes, hence the points
    if 0 < len(pts) <= 24:
        fig.canvas.draw()  # fixes the limits, so data -> pixel transforms are final
        order = sorted(range(len(pts)), key=lambda i: -pts[i][1])
        px = ax.transData.transform([(pts[i][0], pts[i][1]) for i in order]) * 72 / fig.dpi
        sizes = np.array([(4.6 * len(pts[i][2].name) + 2, 9.0) for i in order])
        frame = ax.get_window_extent()
        bounds = tuple(np.array([frame.x0, frame.y0, frame.x1, frame.y1]) * 72 / fig.dpi)
        for i, (dx, dy, ha) in zip(order, place_labels(px, sizes, bounds)):
            x, y, k = pts[i]
            ax.annotate(k.name, (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points",
                        ha=ha, va="bottom",
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5")
                        if abs(dy) > 12 else None)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
