#!/usr/bin/env python3
"""The sinusoidal family's benchmark: the classic module (eager, eager with its table cast to x's dtype, and
torch.compile), pe_ext (table, on the fly, on the fly with precise_angle) and x.clone() (the memory-traffic floor),
side by side in one run, on one device, for a plain add, an add with x * sqrt(d) and scale + dropout in training.
Writes a terminal table and results.csv, results.md and results.png into bench/results/sinusoidal/<device>/.
Method (bench/harness.py): interleaved rounds, median and interquartile range; see bench/README.md.

    python bench/bench_sinusoidal.py                  # full sweep, CUDA when present
    python bench/bench_sinusoidal.py --device cpu --quick
    python bench/bench_sinusoidal.py --device cpu --shapes 64x1x4096,8x512x512 --dtypes float32 --variants plain

On the CPU it runs every configuration in the default process first (glibc's defaults, as users run it), then with
the tuned allocator (--allocator both, the default; or one of them).
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pe_ext
from bench import harness

DROPOUT = 0.1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = ("plain", "scale", "scale_dropout")
ROUNDS = 3  # timing rounds per configuration, each over every provider
# classic_eager_cast: the classic module with its table cast to x's dtype (.to(bfloat16)), so it keeps x's dtype too;
# only for the reduced-precision dtypes, where the plain classic module promotes to float32.
# pe_ext_precise: on the fly with precise_angle=True (the angle reduced in double), to show what accuracy costs.
# pe_ext_op_*: the function pe_ext.add_sinusoidal_pe (with the module's table, or on the fly) instead of the module.
PROVIDERS = ("clone", "classic_eager", "classic_eager_cast", "classic_compiled", "pe_ext_table", "pe_ext_on_the_fly",
             "pe_ext_precise", "pe_ext_op_table", "pe_ext_op_on_the_fly")

FULL_SHAPES = [(64, 1, 4096), (8, 1, 8192), (8, 512, 512), (16, 1024, 1024), (4, 2048, 4096), (1, 32768, 1024),
               (1, 8192, 8192), (2, 4096, 8192)]
QUICK_SHAPES = [(64, 1, 512), (8, 512, 512), (2, 4096, 1024)]
# The GPU targets: decode within 1.2x of clone (64x1x4096, 8x1x8192); on the fly faster than the table at batch 1 in
# bfloat16, and >= 90% of the copy rate from 256 MiB (1x32768x4096 bf16 and 4x8192x2048 float32 are 256 MiB).
TARGET_SHAPES = [(64, 1, 4096), (8, 1, 8192), (1, 32768, 4096), (4, 8192, 2048)]


@dataclass
class Row:
    allocator: str
    variant: str
    dtype: str
    shape: tuple
    provider: str
    median_us: float
    spread_us: float  # interquartile range of the pooled timings
    gbps: float
    pct_clone: float = float("nan")
    speedup_eager: float = float("nan")
    speedup_compiled: float = float("nan")
    peak_extra_mib: float = float("nan")

    @property
    def mib(self) -> float:
        return math.prod(self.shape) * torch.tensor([], dtype=DTYPES[self.dtype]).element_size() / 2**20


class ClassicPositionalEncoding(torch.nn.Module):
    """The classic module as the tutorials write it, with the scale and dropout the variants need."""

    def __init__(self, d_model: int, max_len: int, scale: float, dropout: float):
        super().__init__()
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))
        self.scale, self.dropout = scale, torch.nn.Dropout(dropout)

    def forward(self, x):
        if self.scale != 1.0:
            x = x * self.scale
        return self.dropout(x + self.pe[:, : x.size(1)])


def make_modules(variant: str, d_model: int, max_len: int, device: str) -> dict:
    """The modules of one (variant, d_model), with tables just long enough for the sweep's shapes of that width:
    built once and reused for every dtype and shape, so that torch.compile compiles each graph once and the run's
    memory stays bounded (a 32k-row table at d_model 8192 alone is 1 GiB)."""
    scale = math.sqrt(d_model) if variant != "plain" else 1.0
    dropout = DROPOUT if variant == "scale_dropout" else 0.0
    classic = ClassicPositionalEncoding(d_model, max_len, scale, dropout).to(device).train()
    table = pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale, device=device).train()
    return {
        "classic_eager": classic,
        # dynamic shapes cover batch and length; the dtypes compile once each
        "classic_compiled": torch.compile(classic, dynamic=True),
        "pe_ext_table": table,
        "pe_ext_on_the_fly": pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale,
                                                       buffer="none").to(device).train(),
        "pe_ext_precise": pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale, buffer="none",
                                                    precise_angle=True).to(device).train(),
        "pe_ext_op_table": lambda x: pe_ext.add_sinusoidal_pe(x, table.pe, scale=scale, dropout=dropout),
        "pe_ext_op_on_the_fly": lambda x: pe_ext.add_sinusoidal_pe(x, scale=scale, dropout=dropout),
    }


def make_providers(modules: dict, dtype: torch.dtype, cast_cache: dict) -> dict:
    providers = {"clone": lambda x: x.clone(), **modules}
    if dtype != torch.float32:
        key = (id(modules["classic_eager"]), dtype)
        if key not in cast_cache:
            cast_cache.clear()  # one cast copy alive at a time
            cast_cache[key] = copy.deepcopy(modules["classic_eager"]).to(dtype)
        providers["classic_eager_cast"] = cast_cache[key]
    return providers


def run(args) -> harness.Sweep:
    shapes = args.shapes or (QUICK_SHAPES if args.quick else TARGET_SHAPES if args.targets else FULL_SHAPES)
    dtypes = args.dtypes or (["float32", "bfloat16"] if args.quick or args.targets else list(DTYPES))
    variants = args.variants or (("plain", "scale") if args.quick else ("plain",) if args.targets else VARIANTS)
    by_width = sorted(shapes, key=lambda s: s[2])  # a width's modules are built once
    configs = [(a, v, d, s) for a in args.allocators for v in variants for s in by_width for d in dtypes]
    max_len = {d_model: max(s[1] for s in shapes if s[2] == d_model) for _, _, d_model in shapes}
    modules, cast_cache = {}, {}
    return harness.run_sweep(configs, lambda config: run_config(args, *config, modules, cast_cache, max_len))


def run_config(args, allocator: str, variant: str, dtype_name: str, shape: tuple, modules: dict, cast_cache: dict,
               max_len: dict) -> list[Row]:
    """One configuration: every provider timed in interleaved rounds, with its ratios to the baselines."""
    device = args.device
    if device == "cpu":
        harness.switch_allocator(allocator)
    key = (variant, shape[-1])
    if key not in modules:
        modules.clear()  # the previous width's modules and compiled graphs go before the next are built
        cast_cache.clear()
        torch._dynamo.reset()
        modules[key] = make_modules(variant, shape[-1], max_len[shape[-1]], device)
    harness.release_free_memory(device)
    providers = make_providers(modules[key], DTYPES[dtype_name], cast_cache)
    x = torch.randn(shape, device=device).to(DTYPES[dtype_name])
    moved = 2 * x.numel() * x.element_size()  # read x, write out
    fns = {name: (lambda f=providers[name]: f(x)) for name in PROVIDERS
           if name in providers and not (args.skip_compiled and name == "classic_compiled")}
    timings = harness.time_interleaved(fns, device, args.seconds, ROUNDS)
    group = [Row(allocator, variant, dtype_name, shape, name, t.median_us, t.spread_us, moved / t.median_us / 1e3,
                 peak_extra_mib=t.peak_extra_mib) for name, t in timings.items()]
    base = {r.provider: r.median_us for r in group}
    for r in group:
        r.pct_clone = 100 * base["clone"] / r.median_us
        r.speedup_eager = base["classic_eager"] / r.median_us
        r.speedup_compiled = base.get("classic_compiled", float("nan")) / r.median_us
    return group


COLUMNS = ["allocator", "variant", "dtype", "shape", "MiB", "provider", "median_us", "spread_us", "GB/s", "%clone",
           "x_eager", "x_compiled", "peak_extra_MiB"]


def row_values(r: Row) -> list[str]:
    return [r.allocator, r.variant, r.dtype, "x".join(map(str, r.shape)), f"{r.mib:.1f}", r.provider,
            f"{r.median_us:.1f}", f"{r.spread_us:.1f}", f"{r.gbps:.1f}", f"{r.pct_clone:.0f}", f"{r.speedup_eager:.2f}",
            f"{r.speedup_compiled:.2f}", "-" if math.isnan(r.peak_extra_mib) else f"{r.peak_extra_mib:.1f}"]


def header_lines(args, sweep: harness.Sweep) -> list[str]:
    return [
        *harness.common_header(args.device, args.seconds, ROUNDS, pe_ext.backend()[args.device], args.allocators),
        ("dropout (scale_dropout variant, training mode): nn.Dropout after the add for the classic module, fused "
        "into the same pass (Philox mask) for pe_ext"),
        "bytes moved: read x + write out in x's dtype; % clone = clone time / provider time",
        harness.peak_rss_line(),
        *([f"PARTIAL RESULTS: {sweep.interrupted}"] if sweep.interrupted else []),
    ]


def summary(rows: list[Row]) -> str:
    """Median (and lowest) over shapes of each pe_ext provider's ratios, per allocator (in the run's order: the
    default process first), variant and dtype."""
    lines = ["Summary (median over shapes, lowest in brackets; ratios measured in this run):", ""]
    lines.append("| allocator | variant | dtype | provider | x eager | x compiled | % clone |")
    lines.append("|---|---|---|---|---|---|---|")
    allocators = list(dict.fromkeys(r.allocator for r in rows))
    keys = sorted({(allocators.index(r.allocator), r.variant, r.dtype, r.provider) for r in rows
                   if r.provider.startswith("pe_ext")})
    for allocator, variant, dtype, provider in keys:
        sel = [r for r in rows if (allocators.index(r.allocator), r.variant, r.dtype, r.provider)
               == (allocator, variant, dtype, provider)]

        def med(attr, sel=sel):
            return statistics.median(getattr(r, attr) for r in sel)

        lowest = min(r.speedup_eager for r in sel)
        lines.append(f"| {allocators[allocator]} | {variant} | {dtype} | {provider} | {med('speedup_eager'):.2f} "
                     f"[{lowest:.2f}] | {med('speedup_compiled'):.2f} | {med('pct_clone'):.0f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, device: str) -> None:
    """The plain add, per allocator (the default process first): one panel per dtype for the speedup over the classic
    eager module (the baseline, 1), and one for float32's share of the clone rate (the memory floor, 100%)."""
    def values(allocator, provider, dtype, attr):
        return {"x".join(map(str, r.shape)): getattr(r, attr) for r in rows
                if (r.allocator, r.variant, r.dtype, r.provider) == (allocator, "plain", dtype, provider)}

    speed_providers = ("classic_compiled", "pe_ext_table", "pe_ext_on_the_fly", "pe_ext_op_table",
                       "pe_ext_op_on_the_fly")
    panels = []
    for allocator in dict.fromkeys(r.allocator for r in rows if r.variant == "plain"):
        where = f"{allocator} allocator" if device == "cpu" else device
        panels += [harness.Panel(f"plain add, {dtype}, {where}: speedup over the classic eager module (higher is "
                                 "better)", "speedup (x)",
                                 {p: values(allocator, p, dtype, "speedup_eager") for p in speed_providers},
                                 1.0, "classic eager")
                   for dtype in DTYPES if any((r.allocator, r.dtype) == (allocator, dtype) for r in rows)]
        panels.append(harness.Panel(f"plain add, float32, {where}: share of the clone rate (read x + write out; "
                                    "higher is better)", "% of clone rate",
                                    {p: values(allocator, p, "float32", "pct_clone")
                                     for p in ("classic_eager", *speed_providers)}, 100.0, "clone"))
    harness.bar_panels(path, f"pe_ext sinusoidal, {harness.device_name(device)}", panels)


def add_arguments(parser) -> None:
    def shapes(text):
        return [tuple(int(v) for v in shape.split("x")) for shape in text.split(",")]

    parser.add_argument("--skip-compiled", action="store_true", help="leave out the torch.compile provider")
    parser.add_argument("--shapes", type=shapes, default=None, help="BxLxD,... instead of the sweep's shapes")
    parser.add_argument("--dtypes", type=lambda text: text.split(","), default=None,
                        help=f"a comma-separated subset of {','.join(DTYPES)}")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=None,
                        help=f"a comma-separated subset of {','.join(VARIANTS)}")


def main() -> None:
    args = harness.parse_args("sinusoidal", __doc__, add_arguments, allocator="both")
    for name, chosen, known in (("--dtypes", args.dtypes, DTYPES), ("--variants", args.variants, VARIANTS)):
        if chosen and not set(chosen) <= set(known):
            raise SystemExit(f"{name}: expected a subset of {','.join(known)}, got {','.join(chosen)}")
    # Every compiled classic module shares one forward code object, whose compiles count against one limit; past it
    # torch.compile would quietly run the rest eagerly and the "compiled" column would time eager code.
    torch._dynamo.config.recompile_limit = 256
    sweep = run(args)
    harness.write_results(args.out, header_lines(args, sweep), COLUMNS, [row_values(r) for r in sweep.rows],
                          summary(sweep.rows), lambda path: plot(sweep.rows, path, args.device))


if __name__ == "__main__":
    main()
