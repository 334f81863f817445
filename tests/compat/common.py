"""What tests/compat shares: running the compat layers on each implementation of pe_ext's ops (the C++ kernels, the
CUDA kernel body over its grid on the CPU, the pure-PyTorch fallback), and the distance in float32 ulps."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

import pe_ext.sinusoidal.fallback
import pe_ext.sinusoidal.ops
from tests.helpers import requires_extension, requires_testing_ops

GRID_SMS = 132  # an H100/H200's multiprocessors: batch rows split across blocks


def _grid_add_pe(x, table=None, offset=0, scale=1.0, seq_dim=1, **options):
    out = torch.full_like(x, float("nan"))  # anything the grid fails to cover stays NaN
    torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, offset, scale, seq_dim, GRID_SMS, **options)
    return out


def _grid_fill_table_(out, offset=0, **options):
    torch.ops.pe_ext._add_pe_grid_emulator(out, None, None, offset, 1.0, 0, GRID_SMS, **options)


def _grid_add_pe_(x, table=None, offset=0, scale=1.0, seq_dim=1, **options):
    x.copy_(_grid_add_pe(x, table, offset, scale, seq_dim, **options))


def _grid_add_pe_out(x, table, offset, scale, seq_dim, out, **options):
    out.copy_(_grid_add_pe(x, table, offset, scale, seq_dim, **options))


_GRID = {"add_pe": _grid_add_pe, "add_pe_": _grid_add_pe_, "add_pe_out": _grid_add_pe_out,
         "fill_table_": _grid_fill_table_}


class _TorchServedBy:
    """torch, but with torch.ops.pe_ext.<op>.default served by the given functions."""

    def __init__(self, kernels: dict) -> None:
        self.ops = SimpleNamespace(pe_ext=SimpleNamespace(
            **{name: SimpleNamespace(default=fn) for name, fn in kernels.items()}))

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def served_by(backend: str):
    """pe_ext's Python wrappers (and so every compat layer) call the ops of `backend`: "cpu" (the compiled kernels,
    as always), "grid" (the CUDA kernel body over its grid, which has no autograd: run under no_grad) or
    "fallback"."""
    if backend == "cpu":
        yield
        return
    kernels = _GRID if backend == "grid" else pe_ext.sinusoidal.fallback.KERNELS
    module = pe_ext.sinusoidal.ops
    with pytest.MonkeyPatch.context() as patch, torch.no_grad() if backend == "grid" else contextlib.nullcontext():
        patch.setattr(module, "torch", _TorchServedBy(kernels))
        yield


BACKENDS = [pytest.param("cpu", marks=requires_extension), pytest.param("grid", marks=[requires_extension,
                                                                                      requires_testing_ops]),
            "fallback"]


def ulps(ours: torch.Tensor, theirs: torch.Tensor, magnitude: torch.Tensor | float = 1.0) -> float:
    """The largest |ours - theirs| in float32 ulps of max(|theirs|, magnitude, 1): for values of magnitude <= 1 the
    ulp of 1 (2^-23); for a sum, pass the magnitude of its largest term (the scale of its rounding error)."""
    ours, theirs = torch.as_tensor(ours).detach().double(), torch.as_tensor(theirs).detach().double()
    scale = torch.maximum(theirs.abs(), torch.as_tensor(magnitude, dtype=torch.float64).abs()).clamp(min=1.0)
    ulp = torch.exp2(torch.floor(torch.log2(scale)) - 23)
    return float(((ours - theirs).abs() / ulp).max()) if ours.numel() else 0.0
