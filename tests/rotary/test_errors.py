"""Every bad input gets a clear error, raised before anything is written: one table of bad calls, each with the
exception type it must raise and a pattern its message must match (naming the argument at fault), run against the
compiled ops and the pure-PyTorch fallback alike, so the two keep the same checks."""

from __future__ import annotations

import pytest
import torch

import pe_ext.rotary.fallback
from tests.helpers import FORCED_FALLBACK


def qk(q_shape=(2, 4, 5, 8), k_shape=(2, 2, 5, 8), dtype=torch.float32):
    return torch.randn(q_shape).to(dtype), torch.randn(k_shape).to(dtype)


def inference_qk():
    with torch.inference_mode():
        k = torch.randn(2, 2, 5, 8)
    return torch.randn(2, 4, 5, 8), k


def overlapping_qk():
    t = torch.randn(2, 4, 5, 8)
    return t[:, :2], t[:, 1:3], {}


def table_inside_q():
    t = torch.randn(2, 4, 10, 8)
    return t[:, :, :5], None, {"cos": t[0, 0, 5:], "sin": t[0, 0, 5:]}


def row(make, error, match, id, in_place=False):
    return pytest.param(make, error, match, in_place, id=id)


ROWS = [
    # shapes and layouts
    row(lambda: (torch.randn(5, 8), None, {}), ValueError, r"q must be 4-D \(batch, heads, seq, head_dim\)", "q_2d"),
    row(lambda: (torch.randn(2, 5, 8), None, {"layout": "bhsd"}), ValueError, r"q must be 4-D", "q_3d_bhsd"),
    row(lambda: (torch.randn(2, 4, 5, 8), None, {"layout": "thd"}), ValueError,
        r"q must be 3-D \(total_tokens, heads, head_dim\)", "q_4d_thd"),
    row(lambda: (*qk(), {"layout": "bsdh"}), ValueError, r"layout must be 'bhsd'.*got 'bsdh'", "layout_name"),
    row(lambda: (*qk(), {"style": "interleaved"}), ValueError, r"style must be 'neox'.*got 'interleaved'", "style"),
    row(lambda: (*qk(k_shape=(2, 2, 6, 8)), {}), ValueError, r"k must match q in every dimension but heads", "k_seq"),
    row(lambda: (*qk(k_shape=(2, 2, 5, 16)), {}), ValueError, r"k must match q", "k_head_dim"),
    row(lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 5, 8), {}), ValueError, r"k must be 4-D", "k_rank"),
    # dtypes
    *[row(lambda dtype=dtype: (torch.ones(2, 4, 5, 8, dtype=dtype), None, {}), TypeError,
          r"q must be float32, float64, float16 or bfloat16", f"q_{str(dtype)[6:]}")
      for dtype in (torch.int64, torch.bool, torch.complex64)],
    row(lambda: (torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8).half(), {}), TypeError,
        r"k must have q's dtype \((Float|torch.float32)\), got (Half|torch.float16)",
        "k_dtype"),
    # frequencies
    row(lambda: (*qk(), {"rotary_dim": 7}), ValueError, r"rotary_dim \(rotary_dim\) must be even.*got 7", "odd_dim"),
    row(lambda: (*qk(), {"rotary_dim": 16}), ValueError, r"in \[2, head_dim = 8\], got 16", "dim_too_wide"),
    row(lambda: (*qk(), {"rotary_dim": 0}), ValueError, r"rotary_dim .* got 0", "dim_zero"),
    row(lambda: (*qk(), {"base": 0.0}), ValueError, r"base must be a positive finite number, got 0", "base_zero"),
    row(lambda: (*qk(), {"base": float("nan")}), ValueError, r"base must be a positive finite number", "base_nan"),
    row(lambda: (*qk(), {"attention_scaling": float("inf")}), ValueError, r"attention_scaling must be finite",
        "scaling_inf"),
    row(lambda: (*qk(), {"inv_freq": torch.ones(5)}), ValueError, r"in \[2, head_dim = 8\], got 10", "inv_freq_wide"),
    row(lambda: (*qk(), {"inv_freq": torch.ones(2), "rotary_dim": 8}), ValueError,
        r"inv_freq must hold rotary_dim / 2 = 4 frequencies, got 2", "inv_freq_count"),
    row(lambda: (*qk(), {"inv_freq": torch.ones(2, 2)}), ValueError, r"inv_freq must be 1-D", "inv_freq_2d"),
    row(lambda: (*qk(), {"inv_freq": torch.ones(4).half()}), TypeError, r"inv_freq must be float32 or float64",
        "inv_freq_half"),
    # tables
    row(lambda: (*qk(), {"cos": torch.ones(5, 8)}), ValueError, r"give both cos and sin, or neither", "cos_only"),
    row(lambda: (*qk(), {"cos": torch.ones(5, 8), "sin": torch.ones(5, 8), "precise_angle": True}), ValueError,
        r"with cos and sin tables, inv_freq, precise_angle and attention_scaling do not apply", "tables_precise"),
    row(lambda: (*qk(), {"cos": torch.ones(5), "sin": torch.ones(5)}), ValueError,
        r"cos must be \(rows, rotary_dim\) or \(batch or 1, rows, rotary_dim\)", "cos_1d"),
    row(lambda: (*qk(), {"cos": torch.ones(3, 5, 8), "sin": torch.ones(3, 5, 8)}), ValueError,
        r"cos's first dimension \(3\) must be 1 or q's batch \(2\)", "cos_batch"),
    row(lambda: (*qk(), {"cos": torch.ones(5, 8), "sin": torch.ones(6, 8)}), ValueError, r"sin must have cos's shape",
        "sin_shape"),
    row(lambda: (*qk(), {"cos": torch.ones(5, 7), "sin": torch.ones(5, 7)}), ValueError,
        r"rotary_dim \(cos's last dimension\) must be even", "cos_odd"),
    row(lambda: (*qk(), {"cos": torch.ones(4, 8), "sin": torch.ones(4, 8)}), ValueError,
        r"positions 0 .. 4 must index rows of cos and sin, which have 4", "cos_short"),
    row(lambda: (*qk(), {"cos": torch.ones(9, 8), "sin": torch.ones(9, 8), "positions": torch.tensor([0, 1, 2, 9, 3])}),
        ValueError, r"positions 0 .. 9 must index rows of cos and sin, which have 9", "cos_positions_out"),
    row(lambda: (*qk(), {"cos": torch.ones(9, 8).long(), "sin": torch.ones(9, 8).long()}), TypeError,
        r"cos must be float32", "cos_int"),
    # positions and packed sequences
    row(lambda: (*qk(), {"positions": torch.zeros(5)}), TypeError, r"positions must be an int64 or int32 tensor",
        "positions_float"),
    row(lambda: (*qk(), {"positions": torch.zeros(6, dtype=torch.long)}), ValueError,
        r"positions must have shape \(5,\) \(shared by the batch\) or \(batch, seq\), got \[6\]", "positions_len"),
    row(lambda: (*qk(), {"positions": torch.zeros(3, 5, dtype=torch.long)}), ValueError,
        r"positions must have shape \(5,\)", "positions_batch"),
    row(lambda: (*qk(), {"offset": -1}), ValueError, r"offset must be >= 0, got -1", "offset_negative"),
    row(lambda: (*qk(), {"cu_seqlens": torch.tensor([0, 5])}), ValueError, r"cu_seqlens needs packed tokens",
        "cu_seqlens_bhsd"),
    row(lambda: (torch.randn(6, 2, 8), None, {"layout": "thd", "cu_seqlens": torch.tensor([0, 4, 3, 6])}), ValueError,
        r"cu_seqlens must be non-decreasing, got 4 then 3 at index 2", "cu_seqlens_order"),
    row(lambda: (torch.randn(6, 2, 8), None, {"layout": "thd", "cu_seqlens": torch.tensor([0, 4, 5])}), ValueError,
        r"cu_seqlens must run from 0 to total_tokens \(6\), got 0 .. 5", "cu_seqlens_total"),
    row(lambda: (torch.randn(6, 2, 8), None, {"layout": "thd", "cu_seqlens": torch.tensor([6])}), ValueError,
        r"cu_seqlens must be 1-D \(num_seqs \+ 1,\) with at least one sequence", "cu_seqlens_short"),
    row(lambda: (torch.randn(6, 2, 8), None, {"layout": "thd", "cu_seqlens": torch.tensor([0.0, 6.0])}), TypeError,
        r"cu_seqlens must be an int32 or int64 tensor", "cu_seqlens_float"),
    row(lambda: (torch.randn(6, 2, 8), None, {"layout": "thd", "cu_seqlens": torch.tensor([0, 6]),
                                              "positions": torch.arange(6)}), ValueError,
        r"give positions or cu_seqlens, not both", "positions_and_cu_seqlens"),
    # writes in place
    row(lambda: (torch.randn(2, 1, 5, 8).expand(2, 4, 5, 8), None, {}), ValueError,
        r"q has elements that share memory", "q_expanded", in_place=True),
    row(lambda: overlapping_qk(), ValueError, r"k's memory overlaps q's", "k_overlaps_q", in_place=True),
    row(lambda: table_inside_q(), ValueError, r"q's memory overlaps cos's", "cos_overlaps_q", in_place=True),
    row(lambda: (*inference_qk(), {}), RuntimeError, r"k is an inference tensor \(made under "
        r"torch.inference_mode\(\)\), which can be written only inside inference mode", "k_inference", in_place=True),
]

COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(FORCED_FALLBACK, reason="PE_EXT_FORCE_FALLBACK=1"))


def call(implementation, q, k, options, in_place):
    if implementation == "compiled":
        op = torch.ops.pe_ext.rotary_ if in_place else torch.ops.pe_ext.rotary
        return op(q, k, **options)
    fallback = pe_ext.rotary.fallback
    return (fallback.rotary_ if in_place else fallback.rotary)(q, k, **options)


@pytest.mark.parametrize("implementation", [COMPILED, "fallback"])
@pytest.mark.parametrize("make,error,match,in_place", ROWS)
def test_bad_input_is_refused_before_writing(implementation, make, error, match, in_place):
    q, k, options = make()
    before = [t.detach().clone() for t in (q, k) if t is not None]
    with pytest.raises(error, match=match):
        call(implementation, q, k, options, in_place)
    for t, copy in zip([t for t in (q, k) if t is not None], before):
        torch.testing.assert_close(t.detach(), copy, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("implementation", [COMPILED, "fallback"])
@pytest.mark.parametrize("name", ["inv_freq", "cos", "sin"])
def test_trainable_constants_are_refused(implementation, name):
    """cos, sin and inv_freq get no gradient: a tensor of them that requires grad is an error, not silently ignored."""
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    options = {"cos": torch.ones(3, 8), "sin": torch.zeros(3, 8)} if name != "inv_freq" else {"inv_freq": torch.ones(4)}
    options[name] = options[name].requires_grad_()
    with pytest.raises(RuntimeError, match=rf"{name} requires grad, but rotary treats cos, sin and inv_freq as "
                                           rf"constants.*{name}.detach\(\)"):
        call(implementation, q, None, options, in_place=False)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['rope_theta'\]"):
        pe_ext.rotary.fallback.rotary(torch.randn(1, 1, 2, 4), rope_theta=1.0)
