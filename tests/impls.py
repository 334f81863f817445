"""The implementations under test, each called as f(x, table, offset, scale, base, seq_dim) -> out."""

from __future__ import annotations

import torch

import pe_ext.reference


def _compiled(x, table, offset, scale, base, seq_dim):
    return torch.ops.pe_ext.add_pe(x, table, offset, scale, base, seq_dim)


def _compiled_inplace(x, table, offset, scale, base, seq_dim):
    out = x.clone()
    torch.ops.pe_ext.add_pe_(out, table, offset, scale, base, seq_dim)
    return out


def _compiled_out(x, table, offset, scale, base, seq_dim):
    out = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
    torch.ops.pe_ext.add_pe_out(x, table, offset, scale, base, seq_dim, out)
    return out


def _grid_emulator(num_sms: int):
    def run(x, table, offset, scale, base, seq_dim):
        out = torch.full_like(x, float("nan"))  # anything the grid fails to cover stays NaN
        torch.ops.pe_ext._cuda_grid_emulator(out, x, table, offset, scale, base, seq_dim, num_sms)
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
FALLBACK_IMPLS = {"reference": pe_ext.reference.add_pe}
