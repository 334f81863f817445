"""What every op family's benchmark shares: timing in interleaved rounds, statistics, the CPU allocator settings,
partial results on SIGTERM, and the CSV / Markdown / PNG writers. Each family's script (bench/bench_<op>.py) names
its providers, shapes and baselines, and calls run_sweep() and write_results().

Timing: CUDA uses triton.testing.do_bench (warm-up, L2 flushed before every call), CPU torch.utils.benchmark
(blocked_autorange). Each configuration times its providers in interleaved rounds, so that a slow spell of a shared
machine falls on all of them alike, and reports the median and interquartile range of the pooled timings.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import math
import os
import platform
import resource
import signal
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# glibc hands large freed blocks back to the OS, so every call of a provider that allocates its output page-faults it
# in again. "default" measures that, as a plain Python process does; "tuned" keeps freed memory (no mmap for large
# blocks, no trimming below 2 GiB, mallopt's int limit), so that no provider pays page faults.
ALLOCATORS = {"default": {}, "tuned": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}}
# The environment variables' mallopt parameters (glibc's malloc.h: M_MMAP_MAX, M_TRIM_THRESHOLD).
MALLOPT_PARAMS = {"MALLOC_MMAP_MAX_": -4, "MALLOC_TRIM_THRESHOLD_": -1}
# --allocator both: the default process first, then the tuned settings set in the same process.
BOTH = ("default", "tuned")


def use_allocator(name: str) -> None:
    """Re-executes this process under the named glibc allocator settings, unless it already runs under them."""
    wanted = ALLOCATORS[name]
    unwanted = {key for settings in ALLOCATORS.values() for key in settings} - set(wanted)
    if all(os.environ.get(k) == v for k, v in wanted.items()) and not unwanted & set(os.environ):
        return
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    os.execve(sys.executable, [sys.executable, *sys.argv], {**env, **wanted})


_switched_to: str | None = None


def switch_allocator(name: str) -> None:
    """From the default settings to `name`'s within this process (mallopt, the calls the environment variables make
    at start), so that one run measures both; glibc cannot go back to its default (dynamic) thresholds."""
    global _switched_to
    if name == allocator_in_use():
        return
    if allocator_in_use() != "default" or _switched_to not in (None, name):
        raise RuntimeError(f"cannot switch glibc's allocator from {allocator_in_use()!r} to {name!r}")
    libc = ctypes.CDLL("libc.so.6")
    for key, value in ALLOCATORS[name].items():
        if libc.mallopt(MALLOPT_PARAMS[key], int(value)) != 1:
            raise RuntimeError(f"mallopt({key}={value}) failed")
    _switched_to = name


def allocator_in_use() -> str:
    if _switched_to is not None:
        return _switched_to
    for name, settings in ALLOCATORS.items():
        if settings and all(os.environ.get(k) == v for k, v in settings.items()):
            return name
    return "default"


def allocator_settings(name: str) -> str:
    settings = " ".join(f"{k}={v}" for k, v in ALLOCATORS[name].items()) or "glibc defaults"
    return f"{name} ({settings})"


def parse_args(family: str, description: str,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, allocator: str = "tuned"):
    """The options every benchmark takes, and the family's own (add_arguments). Sets up the process for them: the CPU
    allocator (args.allocators: those to run in order; a family that takes "both" switches with switch_allocator),
    the results folder (args.out = RESULTS_ROOT/<family>/<device>), the default seconds, the seed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a small sweep (about a minute on CPU)")
    parser.add_argument("--targets", action="store_true",
                        help="only the shapes behind the family's stated targets (the GPU check runs these first)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timing per provider and configuration (default 0.6, 0.15 with --quick)")
    parser.add_argument("--allocator", choices=[*ALLOCATORS, *(["both"] if allocator == "both" else [])],
                        default=allocator, help="CPU: glibc's settings for freed memory (see bench/README.md)")
    parser.add_argument("--results", default=str(RESULTS),
                        help=f"results root; this benchmark writes into <results>/{family}/<device>")
    parser.add_argument("--out", default=None, help="write into this folder instead (overrides --results)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    args.allocators = list(BOTH) if args.allocator == "both" else [args.allocator]
    if args.device == "cpu":
        use_allocator(args.allocators[0])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is present")
    if args.seconds is None:
        args.seconds = 0.15 if args.quick else 0.6
    args.out = Path(args.out) if args.out else Path(args.results) / family / args.device
    torch.manual_seed(0)
    return args


def time_cpu(fn: Callable[[], object], seconds: float) -> list[float]:
    """Per-call times (us) of blocks of calls, about `seconds` in all."""
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=seconds)
    return [t * 1e6 for t in m.times]


def time_cuda(fn: Callable[[], object], seconds: float) -> list[float]:
    """Times (us) of single calls, each after an L2 flush, about `seconds` in all."""
    from triton.testing import do_bench

    return [t * 1e3 for t in do_bench(fn, warmup=25, rep=max(1, int(seconds * 1e3)), return_mode="all")]


def timer_for(device: str) -> Callable[[Callable[[], object], float], list[float]]:
    return time_cuda if device == "cuda" else time_cpu


def median_and_iqr(times: list[float]) -> tuple[float, float]:
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
    return median, q3 - q1


def peak_extra_mib(fn: Callable[[], torch.Tensor], device: str) -> float:
    """Memory a call allocates beyond its output, at its peak (CUDA only: the CPU has no allocator statistics)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    outputs = out if isinstance(out, tuple) else (out,)
    extra = torch.cuda.max_memory_allocated() - before - sum(o.numel() * o.element_size() for o in outputs)
    del out, outputs
    return max(extra, 0) / 2**20


def release_free_memory(device: str) -> None:
    """Hand freed memory back before a configuration (its warm-up faults in what it needs again), so that a sweep's
    many sizes do not fragment the heap into a large peak."""
    gc.collect()
    if device == "cpu" and platform.system() == "Linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Timing:
    median_us: float
    spread_us: float  # interquartile range of the pooled timings
    peak_extra_mib: float = float("nan")


def time_interleaved(fns: dict[str, Callable[[], object]], device: str, seconds: float, rounds: int = 3,
                     warmup_calls: int = 3) -> dict[str, Timing]:
    """Every provider timed in `rounds` interleaved rounds of seconds / rounds each, after warm-up calls (compile,
    fault in the allocator's pages, warm caches)."""
    timer = timer_for(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup_calls):
                fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name] += timer(fn, seconds / rounds)
        return {name: Timing(*median_and_iqr(times[name]), peak_extra_mib(fn, device)) for name, fn in fns.items()}


@dataclass
class Sweep:
    """A benchmark run: its configurations, and what it measured so far."""

    configs: list
    rows: list = field(default_factory=list)
    interrupted: str | None = None


def run_sweep(configs: list, run_config: Callable[[object], list], desc: str = "bench") -> Sweep:
    """Runs run_config over the configurations with a progress bar. Ctrl-C, or SIGTERM from a time limit, ends the
    sweep early: what was measured is kept and marked partial."""
    from tqdm import tqdm

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sweep = Sweep(configs)
    done = 0
    try:
        for config in tqdm(configs, desc=desc, unit="config", file=sys.stderr):
            sweep.rows.extend(run_config(config))
            done += 1
    except KeyboardInterrupt:
        sweep.interrupted = f"interrupted after {done} of {len(configs)} configurations"
        print(sweep.interrupted, file=sys.stderr)
    return sweep


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def common_header(device: str, seconds: float, rounds: int, backend: str,
                  allocators: list[str] | None = None) -> list[str]:
    timing = "triton do_bench (L2 flushed before every call)" if device == "cuda" else "torch.utils.benchmark"
    if device == "cpu":
        names = allocators or [allocator_in_use()]
        settings = ", then ".join(map(allocator_settings, names))
        switched = " (set by mallopt after the default rows)" if len(names) > 1 else ""
        allocation = f"outputs allocated per call by every provider; glibc allocator {settings}{switched}"
    else:
        allocation = "outputs allocated per call by every provider (CUDA caching allocator)"
    return [
        f"device: {device_name(device)}",
        f"torch {torch.__version__}, pe_ext backend {backend}",
        f"date: {datetime.date.today().isoformat()}",
        (f"timing: {timing}, {rounds} interleaved rounds of {seconds / rounds:.2f} s per provider; median and "
        "interquartile range"),
        f"allocation: {allocation}",
    ]


def peak_rss_line() -> str:
    return f"peak resident memory of the run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"


def format_table(columns: list[str], lines: list[list[str]]) -> str:
    table = [columns, *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def markdown_table(columns: list[str], lines: list[list[str]]) -> str:
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(rows + ["| " + " | ".join(line) + " |" for line in lines])


def write_results(out: Path, header: list[str], columns: list[str], lines: list[list[str]], summary: str,
                  plot: Callable[[Path], None] | None) -> None:
    """The terminal table and summary, and results.csv, results.md and results.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    print("\n".join(header))
    print(format_table(columns, lines))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for line in header:
            writer.writerow([f"# {line}"])
        writer.writerows([columns, *lines])
    with open(out / "results.md", "w") as f:
        f.write("\n".join(f"- {line}" for line in header) + "\n\n")
        f.write(markdown_table(columns, lines) + "\n\n" + summary + "\n")
    if plot is not None:
        plot(out / "results.png")
    print(summary)
    print(f"wrote {out}/results.csv, results.md" + (", results.png" if plot is not None else ""))


@dataclass
class Panel:
    """One question of a plot: series of values by category (shape), and the baseline they are read against."""

    title: str
    ylabel: str
    series: dict[str, dict[str, float]]
    baseline: float
    baseline_label: str


def bar_panels(path: Path, title: str, panels: list[Panel]) -> None:
    """One panel per question. Categories (shapes) are labelled groups of bars, never joined by lines; each panel's
    baseline is drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 3.6 * len(panels)), squeeze=False)
    # One color per series name across every panel, so that a provider reads the same everywhere.
    names = list(dict.fromkeys(name for panel in panels for name in panel.series))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: palette(i % palette.N) for i, name in enumerate(names)}
    for ax, panel in zip(axes[:, 0], panels):
        categories = sorted({c for values in panel.series.values() for c in values}, key=_category_order)
        width = 0.8 / max(1, len(panel.series))
        for k, (name, values) in enumerate(panel.series.items()):
            xs = [i + (k - (len(panel.series) - 1) / 2) * width for i in range(len(categories))]
            ax.bar(xs, [values.get(c, math.nan) for c in categories], width, label=name, color=colors[name])
        ax.axhline(panel.baseline, color="black", lw=1, ls="--", label=panel.baseline_label)
        ax.set_xticks(range(len(categories)), categories, fontsize=8)
        ax.set_xlabel("shape (batch x seq_len x width)", fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # headroom for the legend
        ax.legend(fontsize=7, ncol=5, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the suptitle above the first panel
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _category_order(category: str):
    """Shapes such as "64x1x4096" in order of their size, then by name."""
    try:
        return (math.prod(int(v) for v in category.split("x")), category)
    except ValueError:
        return (math.inf, category)
