"""The implementations under test, each called as f(x, table, offset, scale, base, seq_dim, **encoding) -> out, where
encoding holds the ops' other encoding keywords (layout, frequencies, min/max_timescale, precise_angle)."""

from __future__ import annotations

import torch

import pe_ext.sinusoidal.reference


def _compiled(x, table, offset, scale, base, seq_dim, **encoding):
    return torch.ops.pe_ext.add_pe(x, table, offset, scale, seq_dim, base=base, **encoding)


def _compiled_inplace(x, table, offset, scale, base, seq_dim, **encoding):
    out = x.clone()
    torch.ops.pe_ext.add_pe_(out, table, offset, scale, seq_dim, base=base, **encoding)
    return out


def _compiled_out(x, table, offset, scale, base, seq_dim, **encoding):
    out = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
    torch.ops.pe_ext.add_pe_out(x, table, offset, scale, seq_dim, out, base=base, **encoding)
    return out


def _grid_emulator(num_sms: int):
    def run(x, table, offset, scale, base, seq_dim, **encoding):
        out = torch.full_like(x, float("nan"))  # anything the grid fails to cover stays NaN
        torch.ops.pe_ext._cuda_grid_emulator(out, x, table, offset, scale, seq_dim, num_sms, base=base, **encoding)
        return out

    return run


# The compiled CPU kernel, its in-place and out= forms, and the CUDA kernel body run over the CUDA grid on the CPU (one
# multiprocessor: grid-stride loops over positions; 132, as an H100/H200: batch rows split across blocks).
EXTENSION_IMPLS = {
    "cpu": _compiled,
    "cpu_inplace": _compiled_inplace,
    "cpu_out": _compiled_out,
    "grid_1sm": _grid_emulator(1),
    "grid_132sm": _grid_emulator(132),
}
def _reference(x, table, offset, scale, base, seq_dim, **encoding):
    return pe_ext.sinusoidal.reference.add_pe(x, table, offset, scale, seq_dim, base=base, **encoding)


FALLBACK_IMPLS = {"reference": _reference}
