#!/usr/bin/env python3
"""pe_ext benchmark: the classic module (eager and torch.compile), pe_ext (table and on the fly) and x.clone(), side
by side in one run, on one device. Writes a terminal table, results.csv, results.md and results.png.

    python bench/bench_pe.py                  # full sweep, CUDA when present
    python bench/bench_pe.py --device cpu --quick

Timing: CUDA uses triton.testing.do_bench (warm-up, L2 flushed before every call), CPU torch.utils.benchmark
(blocked_autorange). Each configuration times its providers in interleaved rounds, so that a slow spell of a shared
machine falls on all of them alike, and reports the median and interquartile range of the pooled timings.

Allocation: every provider allocates its output as ordinary PyTorch code does. On CPU, glibc hands large freed blocks
back to the OS, so each call would page-fault its output in again and the page faults would dominate; the benchmark
therefore runs under MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_ (re-executing itself to set them), which
lets every provider reuse warm memory alike.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import csv
import datetime
import gc
import math
import os
import platform
import resource
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

CPU_ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pe_ext  # noqa: E402

DROPOUT = 0.1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = ("plain", "scale", "scale_dropout")
ROUNDS = 3  # timing rounds per configuration, each over every provider
# classic_eager_cast: the classic module with its table cast to x's dtype (.to(bfloat16)), so it keeps x's dtype too;
# only for the reduced-precision dtypes, where the plain classic module promotes to float32.
# pe_ext_precise: on the fly with precise_angle=True (the angle reduced in double), to show what accuracy costs.
PROVIDERS = ("clone", "classic_eager", "classic_eager_cast", "classic_compiled", "pe_ext_table", "pe_ext_on_the_fly",
             "pe_ext_precise")

FULL_SHAPES = [(64, 1, 4096), (8, 1, 8192), (8, 512, 512), (16, 1024, 1024), (4, 2048, 4096), (1, 32768, 1024),
               (1, 8192, 8192), (2, 4096, 8192)]
QUICK_SHAPES = [(64, 1, 512), (8, 512, 512), (2, 4096, 1024)]


@dataclass
class Row:
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
    return {
        "classic_eager": classic,
        # dynamic shapes cover batch and length; the dtypes compile once each
        "classic_compiled": torch.compile(classic, dynamic=True),
        "pe_ext_table": pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale, device=device).train(),
        "pe_ext_on_the_fly": pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale,
                                                       buffer="none").to(device).train(),
        "pe_ext_precise": pe_ext.PositionalEncoding(d_model, max_len, dropout, scale=scale, buffer="none",
                                                    precise_angle=True).to(device).train(),
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


def time_cpu(fn, seconds: float) -> list[float]:
    """Per-call times (us) of blocks of calls, about `seconds` in all."""
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=seconds)
    return [t * 1e6 for t in m.times]


def time_cuda(fn, seconds: float) -> list[float]:
    """Times (us) of single calls, each after an L2 flush, about `seconds` in all."""
    from triton.testing import do_bench

    return [t * 1e3 for t in do_bench(fn, warmup=25, rep=max(1, int(seconds * 1e3)), return_mode="all")]


def median_and_iqr(times: list[float]) -> tuple[float, float]:
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
    return median, q3 - q1


def peak_extra_mib(fn, device: str) -> float:
    if device != "cuda":
        return float("nan")  # no allocator statistics on CPU
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()
    del out
    return max(extra, 0) / 2**20


def run(args) -> list[Row]:
    from tqdm import tqdm

    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    dtypes = ["float32", "bfloat16"] if args.quick else list(DTYPES)
    variants = ("plain", "scale") if args.quick else VARIANTS
    timer = time_cuda if args.device == "cuda" else time_cpu
    by_width = sorted(shapes, key=lambda s: s[2])  # a width's modules are built once
    configs = [(v, d, s) for v in variants for s in by_width for d in dtypes]
    max_len = {d_model: max(s[1] for s in shapes if s[2] == d_model) for _, _, d_model in shapes}
    rows, modules, cast_cache = [], {}, {}
    try:
        for variant, dtype_name, shape in tqdm(configs, desc="bench", unit="config", file=sys.stderr):
            rows.extend(run_config(args, variant, dtype_name, shape, modules, cast_cache, max_len, timer))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a time limit: keep what was measured
        done = len({(r.variant, r.dtype, r.shape) for r in rows})
        args.interrupted = f"interrupted after {done} of {len(configs)} configurations"
        print(args.interrupted, file=sys.stderr)
    return rows


def release_free_memory(device: str) -> None:
    """Hand freed memory back before a configuration (its warm-up faults in what it needs again): glibc keeps it under
    the benchmark's settings, and the sweep's many sizes would otherwise fragment it into a peak of ~17 GiB."""
    gc.collect()
    if device == "cpu" and platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_config(args, variant: str, dtype_name: str, shape: tuple, modules: dict, cast_cache: dict, max_len: dict,
               timer) -> list[Row]:
    """One configuration: every provider timed in interleaved rounds, with its ratios to the baselines."""
    device = args.device
    key = (variant, shape[-1])
    if key not in modules:
        modules.clear()  # the previous width's modules and compiled graphs go before the next are built
        cast_cache.clear()
        torch._dynamo.reset()
        modules[key] = make_modules(variant, shape[-1], max_len[shape[-1]], device)
    release_free_memory(device)
    providers = make_providers(modules[key], DTYPES[dtype_name], cast_cache)
    x = torch.randn(shape, device=device).to(DTYPES[dtype_name])
    moved = 2 * x.numel() * x.element_size()  # read x, write out
    fns = {name: (lambda f=providers[name]: f(x)) for name in PROVIDERS
           if name in providers and not (args.skip_compiled and name == "classic_compiled")}
    times = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):  # compile, fault in the allocator's pages and warm caches outside the timing
                fn()
        # Interleaved rounds, so that a slow spell of a shared machine falls on every provider alike.
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                times[name] += timer(fn, args.seconds / ROUNDS)
        group = []
        for name, fn in fns.items():
            median, spread = median_and_iqr(times[name])
            group.append(Row(variant, dtype_name, shape, name, median, spread, moved / median / 1e3,
                             peak_extra_mib=peak_extra_mib(fn, device)))
    base = {r.provider: r.median_us for r in group}
    for r in group:
        r.pct_clone = 100 * base["clone"] / r.median_us
        r.speedup_eager = base["classic_eager"] / r.median_us
        r.speedup_compiled = base.get("classic_compiled", float("nan")) / r.median_us
    return group


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def header_lines(args) -> list[str]:
    allocation = ("outputs allocated per call by every provider; glibc set to keep freed memory "
                  f"({' '.join(f'{k}={v}' for k, v in CPU_ALLOCATOR_ENV.items())})" if args.device == "cpu"
                  else "outputs allocated per call by every provider (CUDA caching allocator)")
    return [
        f"device: {device_name(args.device)}",
        f"torch {torch.__version__}, pe_ext backend {pe_ext.backend()[args.device]}",
        f"date: {datetime.date.today().isoformat()}",
        f"timing: {'triton do_bench (L2 flushed before every call)' if args.device == 'cuda' else 'torch.utils.benchmark'}"
        f", {ROUNDS} interleaved rounds of {args.seconds / ROUNDS:.2f} s per provider; median and interquartile range",
        f"allocation: {allocation}",
        "dropout (scale_dropout variant, training mode): nn.Dropout after the add for the classic module, fused into "
        "the same pass (Philox mask) for pe_ext",
        "bytes moved: read x + write out in x's dtype; % clone = clone time / provider time",
        f"peak resident memory of the run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
    ] + ([f"PARTIAL RESULTS: {args.interrupted}"] if args.interrupted else [])


COLUMNS = ["variant", "dtype", "shape", "MiB", "provider", "median_us", "spread_us", "GB/s", "%clone",
           "x_eager", "x_compiled", "peak_extra_MiB"]


def row_values(r: Row) -> list[str]:
    return [r.variant, r.dtype, "x".join(map(str, r.shape)), f"{r.mib:.1f}", r.provider, f"{r.median_us:.1f}",
            f"{r.spread_us:.1f}", f"{r.gbps:.1f}", f"{r.pct_clone:.0f}", f"{r.speedup_eager:.2f}",
            f"{r.speedup_compiled:.2f}", "-" if math.isnan(r.peak_extra_mib) else f"{r.peak_extra_mib:.1f}"]


def write_outputs(rows: list[Row], args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = header_lines(args)
    table = [COLUMNS] + [row_values(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    print("\n".join(header))
    for line in table:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for line in header:
            writer.writerow([f"# {line}"])
        writer.writerows(table)
    with open(out / "results.md", "w") as f:
        f.write("\n".join(f"- {line}" for line in header) + "\n\n")
        f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for line in table[1:]:
            f.write("| " + " | ".join(line) + " |\n")
        f.write("\n" + summary(rows) + "\n")
    plot(rows, out / "results.png", header[0])
    print(summary(rows))
    print(f"wrote {out}/results.csv, results.md, results.png")


def summary(rows: list[Row]) -> str:
    """Median over shapes of each pe_ext provider's ratios, per variant and dtype."""
    lines = ["Summary (median over shapes; ratios measured in this run):", ""]
    lines.append("| variant | dtype | provider | x eager | x compiled | % clone |")
    lines.append("|---|---|---|---|---|---|")
    keys = sorted({(r.variant, r.dtype, r.provider) for r in rows if r.provider.startswith("pe_ext")})
    for variant, dtype, provider in keys:
        sel = [r for r in rows if (r.variant, r.dtype, r.provider) == (variant, dtype, provider)]
        med = lambda attr: statistics.median(getattr(r, attr) for r in sel)  # noqa: E731
        lines.append(f"| {variant} | {dtype} | {provider} | {med('speedup_eager'):.2f} | "
                     f"{med('speedup_compiled'):.2f} | {med('pct_clone'):.0f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_roof) = plt.subplots(1, 2, figsize=(13, 5))
    for provider, marker in (("pe_ext_table", "o"), ("pe_ext_on_the_fly", "s"), ("classic_compiled", "^")):
        for dtype, color in zip(DTYPES, ("C0", "C1", "C2")):
            sel = sorted((r for r in rows if r.provider == provider and r.dtype == dtype and r.variant == "plain"),
                         key=lambda r: r.mib)
            if not sel:
                continue
            label = f"{provider} {dtype}"
            ax_speed.plot([r.mib for r in sel], [r.speedup_eager for r in sel], marker=marker, color=color,
                          label=label, alpha=0.8)
            ax_roof.plot([r.mib for r in sel], [r.pct_clone for r in sel], marker=marker, color=color, label=label,
                         alpha=0.8)
    ax_speed.axhline(1.0, color="gray", lw=0.8)
    ax_roof.axhline(100.0, color="gray", lw=0.8)
    for ax, ylabel in ((ax_speed, "speedup over classic eager"), (ax_roof, "% of clone rate (memory roofline)")):
        ax.set_xscale("log")
        ax.set_xlabel("size of x (MiB)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_roof.legend(fontsize=7)
    fig.suptitle(f"plain add, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a small sweep (under a minute on CPU)")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the torch.compile provider")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timing per provider and configuration (default 0.6, 0.15 with --quick)")
    parser.add_argument("--out", default=None, help="output folder (default bench/results/<device>)")
    args = parser.parse_args()
    if args.device == "cpu" and any(os.environ.get(k) != v for k, v in CPU_ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **CPU_ALLOCATOR_ENV})
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is present")
    # A time limit's SIGTERM (bench/gpu_check.sh) ends the sweep like Ctrl-C: what was measured is still written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.interrupted = None
    if args.seconds is None:
        args.seconds = 0.15 if args.quick else 0.6
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / "sinusoidal" / args.device)
    torch.manual_seed(0)
    # Every compiled classic module shares one forward code object, whose compiles count against one limit; past it
    # torch.compile would quietly run the rest eagerly and the "compiled" column would time eager code.
    torch._dynamo.config.recompile_limit = 256
    write_outputs(run(args), args)


if __name__ == "__main__":
    main()
