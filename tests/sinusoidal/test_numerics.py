"""Special values in x behave as float arithmetic does: NaN and +-inf propagate exactly as in x * scale + pe, huge
magnitudes overflow to inf where the arithmetic does, tiny and subnormal ones survive (no flush to zero), and the
largest offsets give bounded values. References: the float64 oracle, and the same arithmetic done with torch ops on
the oracle's pe values (float32 math for float32/float16/bfloat16 data, float64 for float64, as the README says)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DTYPES
from tests.sinusoidal.impls import IMPLS
from tests.sinusoidal.oracle import OUTPUT_EPS, oracle_pe, tolerance

BASE = 10000.0
FINFO_MAX = {dtype: torch.finfo(dtype).max for dtype in DTYPES}
# Subnormal magnitudes of each dtype (below finfo.tiny, the smallest normal), and the smallest normal itself.
TINY = {
    torch.float32: [1e-45, 3e-42, 1e-40, torch.finfo(torch.float32).tiny],
    torch.float64: [5e-324, 1e-315, 1e-310, torch.finfo(torch.float64).tiny],
    torch.float16: [6e-8, 1e-6, 3e-5, torch.finfo(torch.float16).tiny],
    torch.bfloat16: [1e-40, 3e-39, 1e-38, torch.finfo(torch.bfloat16).tiny],
}


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def run(impl, x, mode, offset, scale, seq_dim=1):
    """impl's result, and the float64 pe values it should have added: the oracle's, or (table mode) the float32
    table built from the oracle, which the kernel reads exactly."""
    seq_len, d_model = x.shape[seq_dim], x.shape[-1]
    if mode == "table":
        table = oracle_pe(torch.arange(offset + seq_len), d_model).float()
        pe = table[offset:].double()
    else:
        table, pe = None, oracle_pe(torch.arange(offset, offset + seq_len), d_model)
    return impl(x, table, offset, scale, BASE, seq_dim), pe.unsqueeze(0)


def float_arithmetic(x, pe, scale):
    """x * scale + pe done by torch in the kernels' math dtype, rounded once to x's dtype."""
    acc = acc_dtype(x.dtype)
    return (x.to(acc) * scale + pe.to(acc)).to(x.dtype)


def sprinkle(x, values, fraction, generator):
    """x with `fraction` of its elements (each kind) replaced by each of `values`, at random places."""
    x = x.clone()
    for value in values:
        x[torch.rand(x.shape, generator=generator) < fraction] = value
    return x


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
@pytest.mark.parametrize("scale", [1.0, 0.5, -3.0, 0.0])
def test_nan_and_inf_propagate_as_in_x_plus_pe(impl, dtype, mode, scale):
    gen = torch.Generator().manual_seed(1)
    x = sprinkle(torch.randn(3, 40, 24, generator=gen), [float("nan"), float("inf"), float("-inf")], 0.1, gen)
    x[1, 7] = float("nan")  # a whole row
    x = x.to(dtype)
    out, pe = run(impl, x, mode, offset=5, scale=scale)
    truth = x.double() * scale + pe  # float64: NaN where x is NaN (or inf * 0), +-inf where x * scale is
    assert torch.equal(out.isnan(), truth.isnan())
    infinite = truth.isinf()
    assert infinite.any() == (scale != 0)
    assert torch.equal(out.double()[infinite], truth[infinite])
    finite = truth.isfinite()
    atol, rtol = tolerance(dtype, 45, 4.0 * abs(scale))
    torch.testing.assert_close(out.double()[finite], truth[finite], atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
@pytest.mark.parametrize("scale", [1.0, 2.0, -10.0])
def test_huge_magnitudes_overflow_as_float_arithmetic_does(impl, dtype, mode, scale):
    gen = torch.Generator().manual_seed(2)
    big = FINFO_MAX[dtype]
    huge = [big, -big, big / 3, -big / 7, big / 1e3]  # float32 1e38-ish; float16 65504, 21834, ...
    x = sprinkle(torch.randn(2, 30, 20, generator=gen, dtype=torch.float64), huge, 0.08, gen).to(dtype)
    out, pe = run(impl, x, mode, offset=3, scale=scale)
    expected = float_arithmetic(x, pe, scale)
    if abs(scale) > 1:
        assert expected.isinf().any()  # the case under test: x * scale overflows
    assert torch.equal(out.isinf(), expected.isinf()) and not out.isnan().any()
    # pe is below half an ulp of the huge values: those come out exactly; the others within the usual tolerance.
    atol, rtol = tolerance(dtype, 33, 4.0 * abs(scale))
    torch.testing.assert_close(out.double(), expected.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_tiny_and_subnormal_magnitudes_are_kept(impl, dtype, mode, scale):
    gen = torch.Generator().manual_seed(3)
    tiny = torch.tensor(TINY[dtype], dtype=torch.float64)
    picks = tiny[torch.randint(len(tiny), (2, 6, 16), generator=gen)]
    signs = torch.where(torch.rand(picks.shape, generator=gen) < 0.5, -1.0, 1.0)
    x = (picks * signs).to(dtype)
    assert (x.abs() < torch.finfo(dtype).tiny).any()  # subnormals really are in x
    out, pe = run(impl, x, mode, offset=0, scale=scale)
    expected = float_arithmetic(x, pe, scale)
    # Position 0 has pe = sin(0) = 0 exactly on its even columns: there the result is x * scale, bit for bit,
    # subnormals included.
    zero_pe = out[:, 0, 0::2]
    assert torch.equal(zero_pe, expected[:, 0, 0::2])
    assert torch.equal(zero_pe != 0, expected[:, 0, 0::2] != 0)  # nothing flushed to zero
    atol, rtol = tolerance(dtype, 6)
    torch.testing.assert_close(out.double(), expected.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_largest_offsets_give_bounded_values(impl, dtype):
    """Positions up to 2**63 - 1 are accepted on the fly; sin and cos keep the result within 1 of x * scale."""
    x = torch.randn(2, 5, 12).to(dtype)
    out = impl(x, None, 2**63 - 1 - 5, 2.0, BASE, 1)
    added = out.double() - x.double() * 2.0
    assert added.isfinite().all()
    assert added.abs().max() <= 1 + 2 * OUTPUT_EPS[dtype] * 8


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_every_float16_value_is_rounded_as_torch_rounds(impl, scale):
    """All 65536 float16 bit patterns as x (NaNs, infinities, subnormals, the largest values), read from a float32
    table: bit for bit torch's own float32 arithmetic rounded once to float16 (scale 1 and 0.5 make x * scale exact,
    so a fused multiply-add rounds as that does). d_model 1025 leaves each row a tail outside 8-element steps."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = torch.cat([bits.view(torch.float16), torch.zeros(64, dtype=torch.float16)]).reshape(4, 16, 1025)
    out, pe = run(impl, x, "table", offset=0, scale=scale)
    expected = (x.float() * scale + pe.float()).half()
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out[~out.isnan()], expected[~expected.isnan()])
