"""The programs a calibration estimates, lowered once, and the systems they run on.

The backend never imports a model library: a calibration receives a *builder*, a callable
``builder(recipe, mode, overrides) -> (fn, args, roles)`` returning a JAX function, its abstract
arguments (``jax.ShapeDtypeStruct``) for one step of a named model recipe in ``mode``
('decode', 'prefill' or 'train'), with ``overrides`` such as ``"data.seq_len=4096"``.
``build_graphs`` lowers each ``Program`` once (fused, and unfused when asked); the estimates then
only re-time the lowered graphs (``cost.rdu`` caches the work per graph, so a refit reruns
``kernel_time`` alone).

Systems (``rdu_step``, ``gpu_step``, ``coe_result``): one SN40L node or DGX as the published
measurements describe them. Units: seconds, bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rdu_xla_backend.cost import coe
from rdu_xla_backend.cost import gpu as gpu_model
from rdu_xla_backend.cost import rdu as perf
from rdu_xla_backend.hardware import A100_80GB, H100, SN30, SN40L
from rdu_xla_backend.mapping.placement import plan_memory
from rdu_xla_backend.workload.graph import Graph
from rdu_xla_backend.workload.lowering import lower

Builder = Callable[[str, str, Sequence[str]], tuple[Callable, tuple, object]]

# The chips every case may use, by key; a fit replaces their parameters.
CHIPS = {"sn40l": SN40L, "sn30": SN30, "a100": A100_80GB, "h100": H100}
HO = dict(parallel="tensor", orchestration="hardware")  # tensor parallel, AGCU-sequenced calls
# [SN40L] measurements were taken before kernel looping existed ([KL], five months later).
SN40L_ERA = dict(HO, kernel_looping=False)


@dataclass(frozen=True)
class Program:
    """One step of a recipe's model: ``recipe`` (file name), ``mode``, ``overrides``."""

    recipe: str
    mode: str
    overrides: tuple[str, ...] = ()
    unfused: bool = False  # also lower the unfused program (key + '_u')


def build_graphs(builder: Builder, programs: dict[str, Program], log=print,
                 graphs: dict[str, Graph] | None = None) -> dict[str, Graph]:
    """Lower every program not yet in ``graphs``; key -> Graph (unfused ones under key + '_u')."""
    g = {} if graphs is None else graphs
    t0 = time.perf_counter()
    for key, p in programs.items():
        if key in g:
            continue
        fn, args, roles = builder(p.recipe, p.mode, list(p.overrides))
        g[key] = lower(fn, *args, name=f"{p.recipe}:{p.mode}", roles=roles)
        if p.unfused:
            g[key + "_u"] = lower(fn, *args, mode="unfused", name=f"{p.recipe}:{p.mode}:unfused",
                                  roles=roles)
    log(f"lowered {len(programs)} programs in {time.perf_counter() - t0:.0f} s")
    return g


def rdu_step(graph: Graph, chips: dict, sockets: int, chip: str = "sn40l", **options) -> float:
    """Seconds of one step of ``graph`` on ``sockets`` sockets of ``chips[chip]``."""
    return perf.program_perf(graph, chips[chip], perf.Options(sockets=sockets, **options)).step_s


def gpu_step(graph: Graph, chips: dict, gpus: int, gpu: str) -> float:
    """Seconds of one step of ``graph`` on ``gpus`` GPUs ``chips[gpu]`` (tensor parallel)."""
    return gpu_model.gpu_perf(graph, chips[gpu], gpus=gpus).step_s


def weight_bytes(graph: Graph) -> float:
    """Bytes of the program's weights (every tier), from the SN40L placement."""
    per = plan_memory(graph, SN40L).bytes.get("weights", {})
    return sum(per.values())


def max_over(fn: Callable[[object], float], items: Iterable) -> float:
    return max(fn(x) for x in items)


# ----------------------------------------------------------------------------- CoE


@dataclass(frozen=True)
class CoESetting:
    """A [SN40L] Table V style CoE batch: experts, batch, prompt and output lengths."""

    experts: int = 150
    batch: int = 8
    prompt_tokens: int = 128  # not given by [SN40L] for Table V: assumed
    output_tokens: int = 20


def coe_programs(setting: CoESetting, prefix: str = "") -> dict[str, Program]:
    """Router prefill (whole batch), expert prefill (one prompt), expert decode (its context)."""
    s = setting
    ctx = s.prompt_tokens + s.output_tokens
    return {
        prefix + "router": Program("llama2-7b.yaml", "prefill", (
            f"data.seq_len={s.prompt_tokens}", f"data.batch_size={s.batch}")),
        prefix + "expert_pre": Program("llama2-7b.yaml", "prefill",
                                       (f"data.seq_len={s.prompt_tokens}",)),
        prefix + "expert_dec": Program("llama2-7b.yaml", "decode", (f"data.seq_len={ctx}",)),
    }


def coe_result(g: dict, chips: dict, setting: CoESetting, system: str,
               prefix: str = "") -> coe.CoEResult:
    """The CoE batch on an 8-socket SN40L node (``system`` 'sn40l', [SN40L] era: looping off,
    hardware orchestration) or a DGX of ``chips[system]`` (8 GPUs)."""
    router, pre, dec = g[prefix + "router"], g[prefix + "expert_pre"], g[prefix + "expert_dec"]
    scenario = coe.CoEScenario(setting.experts, weight_bytes(dec), batch=setting.batch,
                               prompt_tokens=setting.prompt_tokens,
                               output_tokens=setting.output_tokens)
    if system == "sn40l":
        node = coe.rdu_node(chips["sn40l"], 8)
        t = coe.rdu_expert_times(router, pre, dec, node, scenario,
                                 perf.Options(sockets=8, **SN40L_ERA))
        return coe.coe_latency(node, scenario, t)
    box = coe.dgx(chips[system], 8)
    return coe.coe_latency(box, scenario, coe.gpu_expert_times(router, pre, dec, box, scenario))


def coe_speedup(g: dict, chips: dict, setting: CoESetting, gpu: str, prefix: str = "") -> float:
    """DGX per-request latency / SN40L node per-request latency."""
    return (coe_result(g, chips, setting, gpu, prefix).per_request_s
            / coe_result(g, chips, setting, "sn40l", prefix).per_request_s)

