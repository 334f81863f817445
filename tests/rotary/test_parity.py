"""Every implementation (C++ CPU kernel and its in-place form, the CUDA kernel body on the emulated grid, the
fallback) against the float64 oracle over a sample of layouts, styles, partial rotary, GQA/MQA, positions, packed
sequences, offsets, strides and dtypes."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_x
from tests.rotary.impls import IMPLS, check
from tests.rotary.oracle import hf_inv_freq, oracle_angles, oracle_rotate


def packed_positions(cu_seqlens, offset):
    """Positions restarting at each packed sequence's start, written out sequence by sequence."""
    ids = [offset + t for a, b in zip(cu_seqlens.tolist(), cu_seqlens.tolist()[1:]) for t in range(b - a)]
    return torch.tensor([ids])


def case(layout, shape, k_heads, dtype, x_layout="contiguous", positions="default", offset=0, **options):
    return {"layout": layout, "shape": shape, "k_heads": k_heads, "dtype": dtype, "x_layout": x_layout,
            "positions": positions, "offset": offset, "options": options}


# (batch, heads, seq, head_dim) for bhsd, (batch, seq, heads, head_dim) for bshd, (tokens, heads, head_dim) for thd.
CASES = {
    "bhsd_gqa_offset_f32": case("bhsd", (2, 4, 9, 16), 2, torch.float32, offset=5),
    "bshd_mqa_gptj_positions_bf16": case("bshd", (2, 9, 4, 16), 1, torch.bfloat16, positions="per_row", style="gptj"),
    "bhsd_partial_shared_positions_f16": case("bhsd", (2, 3, 9, 16), 3, torch.float16, x_layout="sliced_d",
                                              positions="shared", rotary_dim=8),
    "thd_cu_seqlens_f64": case("thd", (10, 4, 16), 2, torch.float64, positions="cu_seqlens", offset=2),
    "thd_positions_gptj_partial_tail_bf16": case("thd", (7, 2, 16), 1, torch.bfloat16, positions="shared",
                                                 style="gptj", rotary_dim=6),
    "bshd_misaligned_inv_freq_scaled_f32": case("bshd", (1, 5, 3, 32), 3, torch.float32, x_layout="misaligned",
                                                inv_freq="llama3_like", attention_scaling=1.25),
    "bhsd_strided_d_bf16": case("bhsd", (2, 2, 5, 16), 2, torch.bfloat16, x_layout="strided_d"),
    "bhsd_permuted_gptj_f32": case("bhsd", (3, 2, 6, 8), 1, torch.float32, x_layout="permuted", style="gptj"),
    "bhsd_head128_q_only_bf16": case("bhsd", (1, 2, 33, 128), 0, torch.bfloat16, offset=4000),
    "bhsd_head1024_f32": case("bhsd", (1, 1, 3, 1024), 1, torch.float32),  # more frequencies than travel inline
}


def make_case(c, device="cpu"):
    """(q, k, the op's keyword options, the positions [batch, seq] as the oracle sees them, the frequencies), with q
    and k laid out on `device` as the case says."""
    layout, shape, dtype = c["layout"], c["shape"], c["dtype"]
    q = make_x(shape, dtype, c["x_layout"], device)
    head_axis = {"bhsd": 1, "bshd": 2, "thd": 1}[layout]
    k_shape = list(shape)
    k_shape[head_axis] = c["k_heads"]
    k = make_x(tuple(k_shape), dtype, c["x_layout"], device) if c["k_heads"] else None
    batch, seq = (1, shape[0]) if layout == "thd" else (shape[0], shape[2] if layout == "bhsd" else shape[1])
    options = dict(c["options"], offset=c["offset"], layout=layout)
    head_dim = shape[-1]
    rotary_dim = options.get("rotary_dim", head_dim)
    # float64 data compute in float64: frequencies and angles
    inv_freq = hf_inv_freq(10000.0, rotary_dim, torch.float64 if dtype == torch.float64 else torch.float32)
    if options.get("inv_freq") == "llama3_like":  # frequencies no base produces
        inv_freq = inv_freq * torch.linspace(1.0, 0.125, rotary_dim // 2, dtype=inv_freq.dtype)
        options["inv_freq"] = inv_freq.to(device)
    kind = c["positions"]
    if kind == "default":
        positions = torch.arange(seq).expand(batch, seq) + c["offset"]
    elif kind == "shared":
        ids = torch.randperm(3 * seq)[:seq]
        options["positions"] = ids.to(device)
        positions = ids.expand(batch, seq) + c["offset"]
    elif kind == "per_row":
        ids = torch.randint(0, 5000, (batch, seq))
        options["positions"] = ids.to(device)
        positions = ids + c["offset"]
    else:  # cu_seqlens: sequences of 3, 0 and 7 tokens
        cu = torch.tensor([0, 3, 3, seq], dtype=torch.int32)
        options["cu_seqlens"] = cu.to(device)
        positions = packed_positions(cu, c["offset"])
    return q, k, options, positions, inv_freq


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("name", CASES)
def test_matches_oracle(impl, name):
    q, k, options, positions, inv_freq = make_case(CASES[name])
    q_in, k_in = q.clone(), None if k is None else k.clone()
    q_out, k_out = impl(q, k, **options)
    layout, style = options["layout"], options.get("style", "neox")
    scaling = options.get("attention_scaling", 1.0)
    check(q_out, q, positions, inv_freq, layout, style, scaling)
    if k is None:
        assert k_out is None
    else:
        check(k_out, k, positions, inv_freq, layout, style, scaling)
    torch.testing.assert_close(q, q_in, atol=0, rtol=0)  # the inputs of the out-of-place forms stay untouched
    if k is not None:
        torch.testing.assert_close(k, k_in, atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_precise_angle_at_large_positions(impl):
    """The float32 angle loses ~0.03 rad by position 1e6; precise_angle keeps the exact product's rotation."""
    q = torch.randn(1, 2, 6, 16)
    ids = torch.tensor([1_000_003, 2_500_017, 7_777_777, 16_777_259, 30_000_001, 123_456_789])
    inv_freq = hf_inv_freq(10000.0, 16)
    positions = ids[None]
    precise, _ = impl(q, None, positions=ids, precise_angle=True)
    check(precise, q, positions, inv_freq, float32_product=False)
    plain, _ = impl(q, None, positions=ids)
    exact = oracle_rotate(q.transpose(1, 2), oracle_angles(positions, inv_freq, float32_product=False))
    assert (plain.transpose(1, 2).double() - exact).abs().max() > 1e-3  # what precise_angle is for


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_tables_with_positions(impl):
    """cos and sin tables whose rows are read by position: shared (rows, rotary_dim) and per batch row."""
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 1, 5, 8)
    ids = torch.tensor([[0, 7, 3, 3, 11], [2, 1, 0, 9, 10]])
    angles = torch.rand(12, 4, dtype=torch.float64) * 6
    cos, sin = torch.cat((angles, angles), -1).cos().float(), torch.cat((angles, angles), -1).sin().float()
    for table_cos, table_sin in ((cos, sin), (cos.expand(2, 12, 8), sin.expand(2, 12, 8))):
        q_out, k_out = impl(q, k, cos=table_cos, sin=table_sin, positions=ids)
        for out, x in ((q_out, q), (k_out, k)):
            expected = oracle_rotate(x.transpose(1, 2), angles[ids])
            torch.testing.assert_close(out.transpose(1, 2).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_transpose_inverts_the_rotation(impl):
    q = torch.randn(2, 3, 7, 16, dtype=torch.float64)
    for options in ({}, {"style": "gptj", "rotary_dim": 8, "offset": 9}):
        rotated, _ = impl(q, None, **options)
        back, _ = impl(rotated, None, transpose=True, **options)
        torch.testing.assert_close(back, q, atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_empty_inputs(impl):
    """No tokens, no batch rows, or no query heads: nothing to rotate, k still rotated where it has rows."""
    for q_shape, k_shape in (((2, 3, 0, 8), (2, 1, 0, 8)), ((0, 3, 4, 8), (0, 1, 4, 8)), ((2, 0, 4, 8), (2, 2, 4, 8))):
        q, k = torch.randn(q_shape), torch.randn(k_shape)
        q_out, k_out = impl(q, k, offset=2)
        assert q_out.shape == q.shape and k_out.shape == k.shape
        check(k_out, k, torch.arange(2, 2 + k.shape[2]).expand(k.shape[0], k.shape[2]), hf_inv_freq(10000.0, 8))
