"""Calibration: the emulator against the published SN40L / Kernel Looping measurements.

    .venv/bin/python benchmarks/calibration.py [--iters N] [--out benchmarks/results]

Lowers the programs of every case once (abstract shapes: Llama 3.1 8B decode, Llama2-7B prefill
and CoE experts, the GPT-13B dense and 87.5%-sparse training steps), fits the named parameters
(``PARAMS``) ONCE for all cases together (``rdu_xla_backend.calibrate.fit``: least squares on log errors,
Nelder-Mead), and writes one table: markdown and JSON under benchmarks/results/ and a PNG of
estimate vs published on log axes. Every estimate is printed with the fitted values.

The cases are the five published measurements of ``shared/research/hardware.md``; where the
publication gives a range or a bound, the case is a range and its error is 0 inside it. Inputs
describe the measured system, never a per-case constant: [SN40L] measurements (Table IV, Table V,
Fig. 10) were taken before kernel looping existed ([KL], five months later), so they run with
looping off and hardware-orchestrated launches (the [SN40L] production mode); [KL] cases with
hardware orchestration and looping on/off as the paper compares them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rdu_xla_backend import hardware as hw  # noqa: E402
from rdu_xla_backend.calibrate import fit  # noqa: E402
from rdu_xla_backend.cost import coe  # noqa: E402
from rdu_xla_backend.cost import rdu as perf  # noqa: E402
from rdu_xla_backend.cost import gpu as gpu_model  # noqa: E402
from rdu_xla_backend.workload.lowering import lower  # noqa: E402
from rdu_xla_backend.mapping.placement import copy_seconds, plan_memory  # noqa: E402

# Fitted, with search bounds (all not public; see hardware.ModelParameters/GpuParameters).
PARAMS = [
    fit.Param("launch_seconds_software", "rdu", 1e-6, 1e-3),
    fit.Param("launch_seconds_hardware", "rdu", 1e-7, 1e-4),
    fit.Param("hbm_efficiency", "rdu", 0.5, 1.0),
    fit.Param("ddr_efficiency", "rdu", 0.3, 1.0),
    fit.Param("unlooped_stream_efficiency", "rdu", 0.2, 1.0),
    fit.Param("inter_socket_latency_seconds", "rdu", 1e-8, 2e-5),
    fit.Param("inter_socket_bytes_per_s", "rdu", 25e9, 1e12),
    fit.Param("launch_sync_seconds", "gpu", 5e-7, 3e-5),
    fit.Param("achievable_bandwidth_fraction", "gpu", 0.3, 1.0),
    fit.Param("achievable_compute_fraction", "gpu", 0.2, 1.0),
    fit.Param("host_copy_links", "gpu", 1.0, 8.0),
]
# The values assumed before any fitting (the search starts here; the weak prior pulls here).
# hardware.ModelParameters / GpuParameters default to the fitted values this script prints.
DEFAULT_START = {
    "launch_seconds_software": 10e-6, "launch_seconds_hardware": 1e-6, "hbm_efficiency": 0.9,
    "ddr_efficiency": 0.9, "unlooped_stream_efficiency": 0.7, "inter_socket_latency_seconds": 1e-6,
    "inter_socket_bytes_per_s": 100e9, "launch_sync_seconds": 5e-6,
    "achievable_bandwidth_fraction": 0.8, "achievable_compute_fraction": 0.7,
    "host_copy_links": 4.0,
}
STARTS = [DEFAULT_START,
          {**DEFAULT_START, "launch_seconds_software": 1e-4, "launch_seconds_hardware": 5e-6,
           "inter_socket_latency_seconds": 3e-6, "launch_sync_seconds": 3e-6}]
# Weak prior toward the assumed values: a factor e away from an assumed value costs as much as
# one case 3.2% off (0.001 = log(1.032)^2), so a parameter no case constrains stays near its
# assumption instead of drifting to a search bound. (At 0.003 the prior held the software launch
# gap back and left HO vs SO on decode 1.2% below its published range.)
PRIOR_WEIGHT = 0.001
CHIPS = {"sn40l": hw.SN40L, "a100": hw.A100_80GB, "h100": hw.H100}
HO = dict(parallel="tensor", orchestration="hardware")
SN40L_ERA = dict(HO, kernel_looping=False)  # [SN40L] measurements: before [KL]

# name, source, inputs, published, unit, how the point was chosen
SPECS = [
    ("decode_8b_16s", "[SN40L] Table IV",
     "Llama 3.1 8B decode, BF16, batch 1, 8K context, 16 sockets TP16", 1042.0, "tokens/s/user",
     "the published point"),
    ("coe_vs_dgx_a100", "[SN40L] Table V",
     "CoE: 150 Llama2-7B experts, router + experts TP8, batch 8, 128-token prompts (assumed), "
     "20 output tokens; SN40L x8 vs DGX A100", 6.6, "speedup", "the published point"),
    ("coe_vs_dgx_h100", "[SN40L] Table V", "as above vs DGX H100", 3.7, "speedup",
     "the published point"),
    ("fusion_prefill", "[SN40L] Fig. 10",
     "Llama2-7B prefill 4K, 8 sockets TP8: unfused / fused time", (1.5, 3.0), "speedup",
     "range 1.5x-3x for prefill/training; the Llama-7B 4K prefill the text names"),
    ("fusion_train", "[SN40L] Fig. 10",
     "GPT-13B dense training step, 2K sequence, batch 1024, 8 sockets TP8", (1.5, 3.0),
     "speedup", "range 1.5x-3x; the 13B model of the sparse case, dense"),
    ("fusion_sparse_train", "[SN40L] Fig. 10",
     "GPT-13B 87.5%-sparse training step, 2K sequence, 8 sockets TP8", (1.5, 3.0), "speedup",
     "range 1.5x-3x; the named case"),
    ("fusion_decode", "[SN40L] Fig. 10",
     "Llama 3.1 8B decode 8K, batch 1, 8 sockets TP8: unfused / fused", (1.0, 13.0), "speedup",
     "range 1x-13x for decode; the Table IV model on one node"),
    ("ho_vs_so_decode", "[SN40L] Fig. 10",
     "Llama 3.1 8B decode 8K, fused, 8 sockets: software / hardware orchestrated", (1.4, 8.0),
     "speedup", "range 1.4x-8x on decode; the fused decode of the Table IV model"),
    ("ho_vs_so_other", "[SN40L] Fig. 10",
     "max of Llama2-7B prefill 4K and GPT-13B training, 8 sockets: SO / HO", (1.0, 1.1),
     "speedup", "'at most 1.1x elsewhere': the larger of the two non-decode programs"),
    ("kernel_calls_prefill", "[SN40L] Fig. 10 text",
     "Llama2-7B 4K prefill: kernel calls unfused / fused", 11.0, "ratio", "the published point"),
    ("switch_8b", "[HC24]", "Llama 3.1 8B weights DDR -> HBM on an 8-socket node", 0.01, "s",
     "the published point ('about 0.01 s')"),
    ("looping_gain_1s", "[KL] abstract",
     "decode, BF16, batch 1, 4K, 1 socket: looping off / on, the largest over Llama2-7B, "
     "Llama 3.1 8B, Mistral-7B", 2.2, "speedup",
     "'up to 2.2x' over the paper's models: the largest gain over our presets that fit one "
     "socket's HBM"),
    ("peak_fraction_8s", "[KL] abstract",
     "Llama 3.1 8B decode 4K, 8 sockets TP8, looping on: HBM-roofline fraction", (0.9, 1.0),
     "fraction", "'over 90% of peak': bytes per socket / (time x HBM peak)"),
    ("peak_fraction_16s", "[KL] abstract", "as above on 16 sockets TP16", (0.9, 1.0), "fraction",
     "'over 90% of peak' on 16 sockets"),
    ("gpu_decode_bw", "[KL] abstract",
     "Llama 3.1 8B decode 4K, batch 1, DGX H100 TP8: HBM bandwidth used / peak", 0.21, "fraction",
     "'about 21% of peak memory bandwidth' on the DGX H100 of [KL]"),
]


def _program(recipe: str, mode: str, sets: list[str], unfused: bool = False):
    from sparsetrain.config import load_recipe
    from sparsetrain.emulate import program, program_roles

    cfg = load_recipe(str(ROOT / "recipes" / recipe), sets, check_data=False)
    fn, args = program(cfg, mode)
    roles = program_roles(mode)
    fused = lower(fn, *args, name=f"{recipe}:{mode}", roles=roles)
    return (fused, lower(fn, *args, mode="unfused", name=f"{recipe}:{mode}:unfused", roles=roles)
            if unfused else None)


def build_graphs(log=print) -> dict:
    """Every program the cases need, lowered once from abstract shapes."""
    t0 = time.perf_counter()
    g = {}
    g["dec8k"], g["dec8k_u"] = _program("llama3.1-8b.yaml", "decode", [], unfused=True)
    g["dec4k"], _ = _program("llama3.1-8b.yaml", "decode", ["data.seq_len=4096"])
    g["dec4k_l2"], _ = _program("llama2-7b.yaml", "decode", ["data.seq_len=4096"])
    g["dec4k_m7"], _ = _program("mistral-7b.yaml", "decode", ["data.seq_len=4096"])
    g["pre7b"], g["pre7b_u"] = _program("llama2-7b.yaml", "prefill", ["data.seq_len=4096"], True)
    g["router"], _ = _program("llama2-7b.yaml", "prefill", ["data.seq_len=128",
                                                            "data.batch_size=8"])
    g["expert_pre"], _ = _program("llama2-7b.yaml", "prefill", ["data.seq_len=128"])
    g["expert_dec"], _ = _program("llama2-7b.yaml", "decode", ["data.seq_len=148"])
    log(f"lowered the inference programs in {time.perf_counter() - t0:.0f} s")
    g["train13"], g["train13_u"] = _program("gpt3-13b.yaml", "train", [], unfused=True)
    g["sparse13"], g["sparse13_u"] = _program("gpt3-13b-sparse.yaml", "train", [], unfused=True)
    log(f"lowered all programs in {time.perf_counter() - t0:.0f} s")
    return g


def _weights(graph, chip) -> float:
    return plan_memory(graph, chip).bytes.get("weights", {}).get("hbm", 0.0) + \
        plan_memory(graph, chip).bytes.get("weights", {}).get("ddr", 0.0)


def estimators(g: dict) -> dict:
    """Case name -> estimate(chips) on the lowered programs ``g``."""
    def step(graph, chips, sockets, **opt):
        return perf.program_perf(graph, chips["sn40l"], perf.Options(sockets=sockets, **opt)).step_s

    def ratio(slow, fast, sockets, opt_slow, opt_fast):
        return lambda c: step(slow, c, sockets, **opt_slow) / step(fast, c, sockets, **opt_fast)

    def peak_fraction(sockets):
        def f(c):
            pp = perf.program_perf(g["dec4k"], c["sn40l"], perf.Options(sockets=sockets, **HO))
            per_socket = sum(k.offchip_bytes for k in pp.kernels)
            return per_socket / (pp.step_s * c["sn40l"].hbm_bytes_per_s)
        return f

    def gpu_bw(c):
        gp = gpu_model.gpu_perf(g["dec4k"], c["h100"], gpus=8)
        return gp.bytes / 8 / (gp.step_s * c["h100"].hbm_bytes_per_s)

    scenario = coe_scenario(g)

    def coe_speedup(gpu_key):
        def f(c):
            rdu, box = coe_results(g, c, scenario), coe_results(g, c, scenario, gpu_key)
            return box.per_request_s / rdu.per_request_s
        return f

    so, ho = dict(SN40L_ERA, orchestration="software"), SN40L_ERA
    calls = lambda gr, **o: perf.program_perf(gr, hw.SN40L, perf.Options(**o)).launches  # noqa
    return {
        "decode_8b_16s": lambda c: 1.0 / step(g["dec8k"], c, 16, **SN40L_ERA),
        "coe_vs_dgx_a100": coe_speedup("a100"),
        "coe_vs_dgx_h100": coe_speedup("h100"),
        "fusion_prefill": ratio(g["pre7b_u"], g["pre7b"], 8, ho, ho),
        "fusion_train": ratio(g["train13_u"], g["train13"], 8, ho, ho),
        "fusion_sparse_train": ratio(g["sparse13_u"], g["sparse13"], 8, ho, ho),
        "fusion_decode": ratio(g["dec8k_u"], g["dec8k"], 8, ho, ho),
        "ho_vs_so_decode": ratio(g["dec8k"], g["dec8k"], 8, so, ho),
        "ho_vs_so_other": lambda c: max(ratio(x, x, 8, so, ho)(c)
                                        for x in (g["pre7b"], g["train13"])),
        "kernel_calls_prefill": lambda c: (calls(g["pre7b_u"], **SN40L_ERA)
                                           / calls(g["pre7b"], **SN40L_ERA)),
        "switch_8b": lambda c: copy_seconds(_weights(g["dec4k"], hw.SN40L), c["sn40l"], 8),
        "looping_gain_1s": lambda c: max(step(x, c, 1, **SN40L_ERA) / step(x, c, 1, **HO)
                                         for x in (g["dec4k"], g["dec4k_l2"], g["dec4k_m7"])),
        "peak_fraction_8s": peak_fraction(8),
        "peak_fraction_16s": peak_fraction(16),
        "gpu_decode_bw": gpu_bw,
    }


def coe_scenario(g: dict) -> coe.CoEScenario:
    """150 Llama2-7B experts, batch 8, 128-token prompts (assumed), 20 output tokens."""
    return coe.CoEScenario(150, _weights(g["expert_dec"], hw.SN40L), batch=8, prompt_tokens=128,
                           output_tokens=20)


def coe_results(g: dict, chips: dict, scenario: coe.CoEScenario,
                gpu_key: str | None = None) -> coe.CoEResult:
    """The CoE batch on the SN40L node (``gpu_key`` None) or on a DGX of ``chips[gpu_key]``."""
    if gpu_key is None:
        node = coe.rdu_node(chips["sn40l"], 8)
        t = coe.rdu_expert_times(g["router"], g["expert_pre"], g["expert_dec"], node, scenario,
                                 perf.Options(sockets=8, **SN40L_ERA))
        return coe.coe_latency(node, scenario, t)
    box = coe.dgx(chips[gpu_key], 8)
    t = coe.gpu_expert_times(g["router"], g["expert_pre"], g["expert_dec"], box, scenario)
    return coe.coe_latency(box, scenario, t)


def make_cases(estimates: dict) -> list[fit.Case]:
    """The ``SPECS`` with their estimate functions."""
    return [fit.Case(name, src, inputs, pub, unit, estimates[name], how)
            for name, src, inputs, pub, unit, how in SPECS]


def _fmt(x) -> str:
    if isinstance(x, tuple):
        return f"{_fmt(x[0])}-{_fmt(x[1])}"
    return f"{x:.4g}"


def table(cases: list[fit.Case], estimates: dict[str, float], values: dict[str, float]) -> str:
    """The markdown table: case, source, inputs, published, estimate, error %, then parameters."""
    lines = ["| case | source | inputs | published | estimate | unit | error % |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        e = estimates[c.name]
        lines.append(f"| {c.name} | {c.source} | {c.inputs} | {_fmt(c.published)} | {_fmt(e)} | "
                     f"{c.unit} | {fit.error_percent(c, e):+.1f} |")
    within = sum(fit.error_percent(c, estimates[c.name]) == 0 if isinstance(c.published, tuple)
                 else abs(fit.error_percent(c, estimates[c.name])) <= 20 for c in cases)
    lines += ["", f"{within} of {len(cases)} cases within ±20% (ranges: inside the range).", "",
              "Fitted parameters (one set for every case):", ""]
    lines += [f"- {k} = {v:.4g} (assumed before fitting: {DEFAULT_START[k]:.4g})"
              for k, v in values.items()]
    return "\n".join(lines)


def plot(cases: list[fit.Case], estimates: dict[str, float], path: Path) -> Path:
    """Estimate vs published on log axes; ranges as horizontal bars; ±20% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    lo_all, hi_all = [], []
    for c in cases:
        e = estimates[c.name]
        if isinstance(c.published, tuple):
            lo, hi = c.published
            ax.plot([lo, hi], [e, e], "-", color="tab:orange", lw=3, alpha=0.7)
            x = (lo * hi) ** 0.5
            lo_all += [lo, e]
            hi_all += [hi, e]
        else:
            x = c.published
            ax.plot(x, e, "o", color="tab:blue")
            lo_all += [x, e]
            hi_all += [x, e]
        ax.annotate(c.name, (x, e), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(lo_all) / 2, max(hi_all) * 2
    grid = [lo, hi]
    ax.loglog(grid, grid, "k-", lw=0.8)
    ax.fill_between(grid, [v / 1.2 for v in grid], [v * 1.2 for v in grid], color="gray",
                    alpha=0.2, label="±20%")
    ax.set_xlabel("published (ranges: orange bars)")
    ax.set_ylabel("estimate")
    ax.set_title("SN40L emulator calibration (one fitted parameter set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=300, help="Nelder-Mead iterations per start")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    graphs = build_graphs()
    cases = make_cases(estimators(graphs))
    t1 = time.perf_counter()
    result = fit.fit(cases, CHIPS, PARAMS, STARTS, iters=args.iters, prior=DEFAULT_START,
                     prior_weight=PRIOR_WEIGHT)
    print(f"fitted {len(PARAMS)} parameters to {len(cases)} cases in "
          f"{time.perf_counter() - t1:.0f} s ({result.evaluations} evaluations), "
          f"loss {result.loss:.4g}")
    text = table(cases, result.estimates, result.values)
    fitted = fit.apply(CHIPS, PARAMS, result.values)
    scenario = coe_scenario(graphs)
    text += ("\n\nComposition of Experts at the fitted values (150 Llama2-7B experts of "
             f"{scenario.expert_bytes / 1e9:.3g} GB, batch 8, 20 output tokens):\n\n"
             + "\n".join(f"- {coe_results(graphs, fitted, scenario, k).summary()}"
                          for k in (None, "a100", "h100")))
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.md").write_text("# Calibration\n\n" + text + "\n")
    data = {"parameters": result.values, "loss": result.loss, "cases": [
        {"name": c.name, "source": c.source, "inputs": c.inputs, "published": c.published,
         "unit": c.unit, "how": c.how, "estimate": result.estimates[c.name],
         "error_percent": result.errors[c.name]} for c in cases],
        "wall_s": time.perf_counter() - t0}
    (out / "calibration.json").write_text(json.dumps(data, indent=2))
    plot(cases, result.estimates, out / "calibration.png")
    print(f"wrote {out}/calibration.md, calibration.json, calibration.png "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
