"""The implementations of the rotary ops under test, each called as f(q, k, **options) -> (q', k' or None) with the
ops' keyword options, and the parity check every test shares."""

from __future__ import annotations

import pytest
import torch

import pe_ext.rotary.fallback
from tests.helpers import requires_extension, requires_testing_ops
from tests.rotary.oracle import oracle_angles, oracle_rotate, tolerance


def _extension(q, k, **options):
    q_out, k_out = torch.ops.pe_ext.rotary(q, k, **options)
    return q_out, None if k is None else k_out


def _extension_inplace(q, k, **options):
    q_out, k_out = q.clone(), None if k is None else k.clone()
    torch.ops.pe_ext.rotary_(q_out, k_out, **options)
    return q_out, k_out


def _nan_like(t):
    return None if t is None else torch.full_like(t, float("nan"))  # anything the grid fails to cover stays NaN


def _grid_emulator(num_sms: int, in_place: bool = False):
    def run(q, k, **options):
        if in_place:
            q_out, k_out = q.clone(), None if k is None else k.clone()
            torch.ops.pe_ext._rotary_grid_emulator(q_out, k_out, None, None, num_sms, **options)
        else:
            q_out, k_out = _nan_like(q), _nan_like(k)
            torch.ops.pe_ext._rotary_grid_emulator(q_out, k_out, q, k, num_sms, **options)
        return q_out, k_out

    return run


def _fallback(q, k, **options):
    q_out, k_out = pe_ext.rotary.fallback.rotary(q, k, **options)
    return q_out, None if k is None else k_out


# The C++ CPU kernel and its in-place form, and the CUDA kernel body run over the CUDA grid on the CPU (one
# multiprocessor: grid-stride loops over tokens; 132, as an H100/H200: heads split across blocks), in both forms.
EXTENSION_IMPLS = {"cpu": _extension, "cpu_inplace": _extension_inplace}
GRID_IMPLS = {"grid_1sm": _grid_emulator(1), "grid_132sm": _grid_emulator(132),
              "grid_132sm_inplace": _grid_emulator(132, in_place=True)}
FALLBACK_IMPLS = {"fallback": _fallback}

IMPLS = {
    **{k: pytest.param(v, marks=requires_extension) for k, v in EXTENSION_IMPLS.items()},
    **{k: pytest.param(v, marks=[requires_extension, requires_testing_ops]) for k, v in GRID_IMPLS.items()},
    **FALLBACK_IMPLS,
}


def canonical(t, layout):
    """[batch, seq, heads, head_dim] view of a tensor in `layout`."""
    return t.transpose(1, 2) if layout == "bhsd" else t if layout == "bshd" else t.unsqueeze(0)


def check(out, x, positions, inv_freq, layout="bhsd", style="neox", scaling=1.0, float32_product=True,
          magnitude=4.0):
    """out equals x rotated by positions ([batch, seq] int64) against the float64 oracle, to x's dtype's tolerance."""
    assert out.dtype == x.dtype and out.shape == x.shape
    expected = oracle_rotate(canonical(x.cpu(), layout), oracle_angles(positions.cpu(), inv_freq, float32_product),
                             style, scaling)
    atol, rtol = tolerance(x.dtype, magnitude * max(1.0, abs(scaling)))
    torch.testing.assert_close(canonical(out.cpu(), layout).double(), expected, atol=atol, rtol=rtol)
