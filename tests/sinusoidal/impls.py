"""The implementations of the sinusoidal ops under test, each called as f(x, table, offset, scale, base, seq_dim,
**encoding) -> out, where encoding holds the ops' other options; and the checks every parity test shares."""

from __future__ import annotations

import pytest
import torch

import pe_ext.sinusoidal.fallback
from tests.helpers import requires_extension, requires_testing_ops
from tests.sinusoidal.oracle import oracle_add, tolerance


def _extension(x, table, offset, scale, base, seq_dim, **encoding):
    return torch.ops.pe_ext.add_pe(x, table, offset, scale, seq_dim, base=base, **encoding)


def _extension_inplace(x, table, offset, scale, base, seq_dim, **encoding):
    out = x.clone()
    torch.ops.pe_ext.add_pe_(out, table, offset, scale, seq_dim, base=base, **encoding)
    return out


def _extension_out(x, table, offset, scale, base, seq_dim, **encoding):
    out = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
    torch.ops.pe_ext.add_pe_out(x, table, offset, scale, seq_dim, out, base=base, **encoding)
    return out


def _grid_emulator(num_sms: int):
    def run(x, table, offset, scale, base, seq_dim, **encoding):
        out = torch.full_like(x, float("nan"))  # anything the grid fails to cover stays NaN
        torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, offset, scale, seq_dim, num_sms, base=base, **encoding)
        return out

    return run


def _fallback(x, table, offset, scale, base, seq_dim, **encoding):
    return pe_ext.sinusoidal.fallback.add_pe(x, table, offset, scale, seq_dim, base=base, **encoding)


# The C++ CPU kernel, its in-place and out= forms, and the CUDA kernel body run over the CUDA grid on the CPU (one
# multiprocessor: grid-stride loops over positions; 132, as an H100/H200: batch rows split across blocks).
EXTENSION_IMPLS = {
    "cpu": _extension,
    "cpu_inplace": _extension_inplace,
    "cpu_out": _extension_out,
}
GRID_IMPLS = {"grid_1sm": _grid_emulator(1), "grid_132sm": _grid_emulator(132)}
FALLBACK_IMPLS = {"fallback": _fallback}

# Every implementation, as pytest parameters that skip (saying why) where the build lacks them.
IMPLS = {
    **{k: pytest.param(v, marks=requires_extension) for k, v in EXTENSION_IMPLS.items()},
    **{k: pytest.param(v, marks=[requires_extension, requires_testing_ops]) for k, v in GRID_IMPLS.items()},
    **FALLBACK_IMPLS,
}

ENCODINGS = {
    "paper_interleaved": {},
    "paper_concatenated": {"layout": "concatenated"},
    "timescales_concatenated": {"frequencies": "timescales", "layout": "concatenated"},
    "timescales_interleaved": {"frequencies": "timescales", "min_timescale": 2.0, "max_timescale": 500.0},
}


def check(out, x, offset=0, scale=1.0, base=10000.0, seq_dim=1, magnitude=4.0):
    """out equals x * scale + pe against the float64 oracle, to the tolerance of x's dtype."""
    assert out.dtype == x.dtype and out.shape == x.shape
    seq_len = x.shape[seq_dim if x.dim() == 3 else 0]
    atol, rtol = tolerance(x.dtype, offset + seq_len, magnitude * abs(scale))
    torch.testing.assert_close(out.double().cpu(), oracle_add(x.cpu(), offset, scale, base, seq_dim), atol=atol,
                               rtol=rtol)
