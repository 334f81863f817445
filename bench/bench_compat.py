#!/usr/bin/env python3
"""pe_ext.compat's layers against each project's own module, eager and under torch.compile, one row per layer (and
mode: eval, or training with dropout where the layer has it). The projects' modules are tests/compat/reimpl.py's
re-implementations of their code (the projects are not installed; each evaluates its project's statements in its
order), except Hugging Face's, which are transformers' own classes. Writes a terminal table and results.csv,
results.md and results.png into bench/results/compat/<device>/. Method: bench/harness.py, bench/README.md.

    python bench/bench_compat.py --device cpu --quick
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pe_ext
from bench import harness
from pe_ext.compat import detr, diffusers, espnet, fairseq, hf, mae, t2t, tutorial, xtransformers
from tests.compat import reimpl

ROUNDS = 3
DROPOUT = 0.1
PROVIDERS = ("project_eager", "project_compiled", "pe_ext")


@dataclass
class Case:
    """One layer in one mode at one size: the project's callable, pe_ext's, and their input."""

    project: str
    layer: str
    mode: str
    shape: str
    theirs: Callable
    ours: Callable
    inputs: tuple
    compile: bool = True  # False where the project's code is not PyTorch (MAE's NumPy)


def _modules(mode: str, *pair):
    return [m.train(mode == "train") for m in pair]


def _sequence_cases(size: tuple) -> list[Case]:
    b, length, d = size
    label = "x".join(map(str, size))
    x = torch.randn(b, length, d)
    cases = []
    for mode in ("eval", "train"):
        p = DROPOUT if mode == "train" else 0.0
        theirs, ours = _modules(mode, reimpl.TutorialPositionalEncoding(d, p, length),
                                tutorial.PositionalEncoding(d, p, length))
        cases.append(Case("tutorial", "PositionalEncoding", mode, label, theirs, ours, (x.transpose(0, 1),)))
        for name in ("PositionalEncoding", "RelPositionalEncoding"):
            theirs, ours = _modules(mode, getattr(reimpl, "Espnet" + name)(d, p, length),
                                    getattr(espnet, name)(d, p, length))
            cases.append(Case("espnet", name, mode, label, theirs, ours, (x,)))
    for name in ("ScaledPositionalEncoding", "LegacyRelPositionalEncoding"):
        theirs, ours = _modules("eval", getattr(reimpl, "Espnet" + name)(d, 0.0, length),
                                getattr(espnet, name)(d, 0.0, length))
        cases.append(Case("espnet", name, "eval", label, theirs, ours, (x,)))
    theirs, ours = _modules("eval", reimpl.EspnetStreamPositionalEncoding(d, 0.0, 2 * length),
                            espnet.StreamPositionalEncoding(d, 0.0, 2 * length))
    cases.append(Case("espnet", "StreamPositionalEncoding (start_idx 100)", "eval", label, theirs, ours, (x, 100)))
    tokens = torch.randint(2, 1000, (b, length))
    cases.append(Case("fairseq", "SinusoidalPositionalEmbedding", "eval", label,
                      reimpl.FairseqSinusoidalPositionalEmbedding(d, 1, length + 2),
                      fairseq.SinusoidalPositionalEmbedding(d, 1), (tokens,)))
    cases.append(Case("tensor2tensor", "add_timing_signal_1d", "eval", label,
                      lambda x: x + reimpl.t2t_signal(x.shape[1], x.shape[2]), t2t.add_timing_signal_1d, (x,)))
    cases.append(Case("x-transformers", "ScaledSinusoidalEmbedding", "eval", label,
                      reimpl.XTransformersScaledSinusoidalEmbedding(d), xtransformers.ScaledSinusoidalEmbedding(d),
                      (x,)))
    return cases


def _hf_cases(size: tuple) -> list[Case]:
    """Hugging Face's own modules against the same modules patched by pe_ext.patch."""
    b, length, d = size
    label = "x".join(map(str, size))
    import transformers

    tokens = torch.randint(2, 1000, (b, length))
    m2m100 = transformers.models.m2m_100.modeling_m2m_100.M2M100SinusoidalPositionalEmbedding(length, d, 1)
    marian = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(length, d)
    with torch.no_grad():
        marian.weight.copy_(marian.create_weight())
    whisper = torch.nn.Embedding(length, d)
    with torch.no_grad():
        whisper.weight.copy_(transformers.models.whisper.modeling_whisper.sinusoids(length, d))
    cases = []
    for name, module, rows, inputs in (("M2M100SinusoidalPositionalEmbedding", m2m100, hf.M2M100Rows, (tokens,)),
                                       ("MarianSinusoidalPositionalEmbedding", marian, hf.MarianRows, ((b, length),)),
                                       ("Whisper encoder embed_positions", whisper, hf.WhisperEncoderRows,
                                        (torch.arange(length),))):
        patched = pe_ext.compat.patchers._retyped(module, rows)
        cases.append(Case("huggingface", name, "eval", label, module.eval(), patched, inputs))
    return cases


def _other_cases(quick: bool) -> list[Case]:
    timesteps = torch.rand(256) * 1000
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, 48:], mask[1, :, 40:] = True, True
    images = detr.NestedTensor(torch.zeros(2, 3, 64, 64), mask)
    grid = 14 if quick else 32
    return [
        Case("diffusers", "Timesteps(320, flip_sin_to_cos)", "eval", "256", reimpl.DiffusersTimesteps(320, True, 0),
             diffusers.Timesteps(320, True, 0), (timesteps,)),
        Case("DETR", "PositionEmbeddingSine(128, normalize)", "eval", "2x64x64",
             reimpl.DetrPositionEmbeddingSine(128, normalize=True), detr.PositionEmbeddingSine(128, normalize=True),
             (images,)),
        Case("MAE", "get_2d_sincos_pos_embed(768)", "-", f"{grid}x{grid}", lambda: reimpl.mae_2d(768, grid, True),
             lambda: mae.get_2d_sincos_pos_embed(768, grid, True), (), compile=False),
    ]


def cases(quick: bool) -> list[Case]:
    sizes = [(8, 512, 512)] if quick else [(8, 512, 512), (2, 4096, 1024)]
    return [c for size in sizes for c in _sequence_cases(size) + _hf_cases(size)] + _other_cases(quick)


@dataclass
class Row:
    case: Case
    provider: str
    median_us: float
    spread_us: float
    speedup_eager: float = float("nan")
    speedup_compiled: float = float("nan")


def run_case(args, case: Case) -> list[Row]:
    torch._dynamo.reset()
    harness.release_free_memory(args.device)
    fns = {"project_eager": case.theirs, "pe_ext": case.ours}
    if case.compile and not args.skip_compiled:
        fns["project_compiled"] = torch.compile(case.theirs)
    calls = {name: (lambda f=fns[name]: f(*case.inputs)) for name in PROVIDERS if name in fns}
    timings = harness.time_interleaved(calls, args.device, args.seconds, ROUNDS)
    rows = [Row(case, name, t.median_us, t.spread_us) for name, t in timings.items()]
    base = {r.provider: r.median_us for r in rows}
    for r in rows:
        r.speedup_eager = base["project_eager"] / r.median_us
        r.speedup_compiled = base.get("project_compiled", float("nan")) / r.median_us
    return rows


COLUMNS = ["project", "layer", "mode", "shape", "provider", "median_us", "spread_us", "x_eager", "x_compiled"]


def row_values(r: Row) -> list[str]:
    return [r.case.project, r.case.layer, r.case.mode, r.case.shape, r.provider, f"{r.median_us:.1f}",
            f"{r.spread_us:.1f}", f"{r.speedup_eager:.2f}", f"{r.speedup_compiled:.2f}"]


def summary(rows: list[Row]) -> str:
    lines = ["pe_ext against each project's own module (ratios measured in this run; > 1: pe_ext is faster):", "",
             "| project | layer | mode | shape | x eager | x compiled |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.provider == "pe_ext":
            lines.append(f"| {r.case.project} | {r.case.layer} | {r.case.mode} | {r.case.shape} | "
                         f"{r.speedup_eager:.2f} | {r.speedup_compiled:.2f} |")
    ours = [r.speedup_eager for r in rows if r.provider == "pe_ext"]
    lines += ["", f"median over rows: x eager {statistics.median(ours):.2f}"]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, device: str) -> None:
    def values(provider):
        return {f"{r.case.layer} {r.case.mode} {r.case.shape}": r.speedup_eager for r in rows
                if r.provider == provider}

    panel = harness.Panel("speedup over the project's own module in eager mode (higher is better)", "speedup (x)",
                          {p: values(p) for p in ("project_compiled", "pe_ext")}, 1.0, "project eager")
    harness.bar_panels(path, f"pe_ext.compat, {harness.device_name(device)}", [panel])


def main() -> None:
    args = harness.parse_args("compat", __doc__, lambda parser: parser.add_argument(
        "--skip-compiled", action="store_true", help="leave out the torch.compile provider"))
    torch._dynamo.config.recompile_limit = 64
    sweep = harness.run_sweep(cases(args.quick), lambda case: run_case(args, case), desc="compat")
    header = [
        *harness.common_header(args.device, args.seconds, ROUNDS, pe_ext.backend()[args.device]),
        ("project_eager / project_compiled: tests/compat/reimpl.py's re-implementation of the project's module "
         "(its statements, in its order), or transformers' own class; pe_ext: pe_ext.compat's layer (Hugging Face: "
         "the module as pe_ext.patch leaves it)"),
        f"training rows: dropout {DROPOUT}, nn.Dropout after the add for the project, fused (Philox) for pe_ext",
        harness.peak_rss_line(),
        *([f"PARTIAL RESULTS: {sweep.interrupted}"] if sweep.interrupted else []),
    ]
    harness.write_results(args.out, header, COLUMNS, [row_values(r) for r in sweep.rows], summary(sweep.rows),
                          lambda path: plot(sweep.rows, path, args.device))


if __name__ == "__main__":
    main()
