"""Benchmarks: per-stage latency and end-to-end FPS of every backend against the paper's code path,
the gRPC serving overhead, and the GPU fast path. `mevos bench` is the command; results go to
benchmarks/results/ as JSON, PNG and SUMMARY.md.

    from mevos.bench import Runner, quick_plan
    doc = Runner(quick_plan(), torch.device("cpu")).run(["python"])
"""

from mevos.bench.plan import PLANS, RESOLUTIONS, VARIANTS, BenchPlan, Variant, full_plan, quick_plan, tiny_plan
from mevos.bench.runner import Runner
from mevos.bench.schema import SCHEMA, check, problems

__all__ = ["BenchPlan", "Variant", "VARIANTS", "RESOLUTIONS", "PLANS", "full_plan", "quick_plan", "tiny_plan",
           "Runner", "SCHEMA", "check", "problems"]
