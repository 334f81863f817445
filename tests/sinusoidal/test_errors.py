"""Every bad input gets a clear error, raised before anything is written: one table of bad calls, each with the
exception type it must raise and a pattern its message must match (naming the argument at fault), run against the
compiled ops and the pure-PyTorch fallback alike, so the two keep the same checks.

Without a GPU, x and table on different devices are emulated with the meta device: a call mixing meta and CPU
tensors dispatches to the fake kernels in pe_ext/sinusoidal/ops.py, which run checks.py's checks; the C++ device
check is exercised on a GPU by test_cuda.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pe_ext
import pe_ext.sinusoidal.fallback
from tests.helpers import FORCED_FALLBACK

BASE = 10000.0
I64 = 2**63 - 1


def x3(*shape, dtype=torch.float32, **kwargs):
    """A (2, 5, 8) x by default: batch 2, seq_len 5, d_model 8."""
    return torch.randn(*(shape or (2, 5, 8)), **kwargs).to(dtype)


def table(rows=16, d_model=8, dtype=torch.float32, **kwargs):
    return torch.randn(rows, d_model, **kwargs).to(dtype)


def overlapping(shape, strides):
    """A view whose elements share memory without a zero stride (at::has_internal_overlap cannot tell)."""
    return torch.randn(200).as_strided(shape, strides)


def leaf_requiring_grad(*shape):
    return torch.randn(*shape, requires_grad=True)


def inference(t):
    with torch.inference_mode():
        return t.clone()


def x_viewing_table():
    t = torch.randn(16, 8)
    return t[:5], t  # x is the first rows of the table


def row(op, make, error, match, id):
    return pytest.param(op, make, error, match, id=id)


# (op, arguments (made fresh for each call), exception type, message pattern). Arguments are listed as
# add_pe/add_pe_(x, table, offset, scale, base, seq_dim), add_pe_out(..., out), fill_table_(out, offset, base);
# call_op passes base as the keyword the schemas make it, and a trailing dict as further keywords.
OP_ROWS = [
    # rank
    row("add_pe", lambda: (torch.randn(8), None, 0, 1.0, BASE, 0), ValueError, r"x must be 2-D.*got a 1-D", "x_1d"),
    row("add_pe", lambda: (torch.tensor(1.0), None, 0, 1.0, BASE, 0), ValueError, r"x must be 2-D.*got a 0-D", "x_0d"),
    row("add_pe_", lambda: (x3(1, 2, 5, 8), None, 0, 1.0, BASE, 1), ValueError, r"x must be 2-D.*got a 4-D", "x_4d"),
    row("add_pe", lambda: (x3(), torch.randn(16), 0, 1.0, BASE, 1), ValueError, r"table must have shape", "table_1d"),
    row("add_pe_", lambda: (x3(), torch.randn(2, 16, 8), 0, 1.0, BASE, 1), ValueError, r"table must have shape",
        "table_3d_batched"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, x3(2, 6, 8)), ValueError, r"out must have x's shape",
        "out_shape"),
    row("fill_table_", lambda: (torch.randn(1, 4, 8), 0, BASE), ValueError, r"out must be 2-D", "fill_out_3d"),
    # d_model: the table's width
    row("add_pe", lambda: (x3(), table(d_model=16), 0, 1.0, BASE, 1), ValueError,
        r"table's last dimension \(16\) must equal x's last dimension d_model \(8\)", "table_width"),
    row("add_pe_", lambda: (x3(), table(d_model=7).unsqueeze(0), 0, 1.0, BASE, 1), ValueError,
        r"table's last dimension \(7\).*d_model \(8\)", "table_width_inplace"),
    # dtypes: x that is not floating point, tables and outputs that cannot work with x
    *[row(op, lambda dtype=dtype: (x3(dtype=dtype), None, 0, 1.0, BASE, 1), TypeError,
          r"x must be float32, float64, float16 or bfloat16", f"{op}_x_{str(dtype)[6:]}")
      for op in ("add_pe", "add_pe_")
      for dtype in (torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64)],
    row("add_pe_out", lambda: (x3(dtype=torch.int64), None, 0, 1.0, BASE, 1, x3(dtype=torch.int64)), TypeError,
        r"x must be float32", "out_x_int"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, x3(dtype=torch.int32)), TypeError,
        r"out must have x's dtype", "out_int"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, x3(dtype=torch.float64)), TypeError,
        r"out must have x's dtype", "out_float64"),
    row("add_pe", lambda: (x3(), table(dtype=torch.float16), 0, 1.0, BASE, 1), TypeError,
        r"table must be float32 or x's dtype", "table_fp16_x_fp32"),
    row("add_pe_", lambda: (x3(dtype=torch.float16), table(dtype=torch.bfloat16), 0, 1.0, BASE, 1), TypeError,
        r"table must be float32 or x's dtype", "table_bf16_x_fp16"),
    row("add_pe_", lambda: (x3(), table(dtype=torch.int32), 0, 1.0, BASE, 1), TypeError,
        r"table must be float32 or x's dtype", "table_int"),
    row("fill_table_", lambda: (torch.zeros(4, 8, dtype=torch.int32), 0, BASE), TypeError,
        r"out must be float32, float64, float16 or bfloat16", "fill_out_int"),
    row("fill_table_", lambda: (torch.zeros(4, 8, dtype=torch.complex64), 0, BASE), TypeError,
        r"out must be float32", "fill_out_complex"),
    # devices (meta emulates a second device; see the module docstring)
    row("add_pe", lambda: (x3(), table(device="meta"), 0, 1.0, BASE, 1), ValueError,
        r"table is on meta but x is on cpu", "table_meta_x_cpu"),
    row("add_pe_", lambda: (x3(), table(device="meta"), 0, 1.0, BASE, 1), ValueError,
        r"table is on meta but x is on cpu", "table_meta_x_cpu_inplace"),
    row("add_pe", lambda: (x3(device="meta"), table(), 0, 1.0, BASE, 1), ValueError,
        r"table is on cpu but x is on meta", "table_cpu_x_meta"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, x3(device="meta")), ValueError,
        r"out is on meta but x is on cpu", "out_meta_x_cpu"),
    # a table too short for the positions asked
    row("add_pe", lambda: (x3(), table(rows=7), 3, 1.0, BASE, 1), ValueError,
        r"positions up to 7 need 8 table rows, but the table has 7 \(max_len\)", "table_short"),
    row("add_pe_", lambda: (x3(), table(rows=4).unsqueeze(0), 0, 1.0, BASE, 1), ValueError,
        r"need 5 table rows, but the table has 4", "table_short_inplace"),
    row("add_pe_out", lambda: (x3(5, 2, 8), table(rows=5), 1, 1.0, BASE, 0, x3(5, 2, 8)), ValueError,
        r"need 6 table rows, but the table has 5", "table_short_out_seq_first"),
    row("add_pe_", lambda: (x3(2, 5, 8), table(rows=5), I64 - 5, 1.0, BASE, 1), ValueError,
        r"need 9223372036854775807 table rows, but the table has 5", "table_short_huge_offset"),
    # offsets: negative ones are computed on the fly, and index no table row
    row("add_pe", lambda: (x3(), table(), -1, 1.0, BASE, 1), ValueError,
        r"table rows start at position 0, but the call uses position -1 \(offset \+ positions\)", "offset_neg_table"),
    row("add_pe_", lambda: (x3(), table(), -(2**63), 1.0, BASE, 1), ValueError,
        r"uses position -9223372036854775808", "offset_min_table"),
    row("add_pe_", lambda: (x3(), None, I64, 1.0, BASE, 1), ValueError,
        r"offset \(9223372036854775807\) \+ seq_len \(5\) overflows int64", "offset_max"),
    row("add_pe_out", lambda: (x3(), None, I64 - 4, 1.0, BASE, 1, x3()), ValueError,
        r"offset \(9223372036854775803\) \+ seq_len \(5\) overflows int64", "offset_overflow_by_one"),
    row("fill_table_", lambda: (torch.zeros(4, 8), I64 - 2, BASE), ValueError, r"offset .* overflows int64",
        "fill_offset_overflow"),
    # positions: negative, fractional or non-finite ones against a table, overflowing sums
    row("add_pe", lambda: (x3(), table(), 2, 1.0, BASE, 1, {"positions": torch.tensor([0, 1, -3, 4, 5])}), ValueError,
        r"table rows start at position 0, but the call uses position -1", "positions_neg_table"),
    row("add_pe_", lambda: (x3(), table(), 0, 1.0, BASE, 1, {"positions": torch.rand(5)}), ValueError,
        r"fractional \(floating-point\) positions index no table row", "positions_fractional_table"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"positions": torch.tensor([0.5, float("nan"), 1, 2, 3])}),
        ValueError, r"positions must be finite", "positions_nan"),
    row("fill_table_", lambda: (torch.zeros(2, 8), 0, BASE, {"positions": torch.tensor([1.0, float("inf")])}),
        ValueError, r"positions must be finite", "fill_positions_inf"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"positions": torch.zeros(5, dtype=torch.int16)}), TypeError,
        r"positions must be an int64 or int32 tensor \(ids\), or a float32", "positions_int16"),
    row("add_pe", lambda: (x3(), None, -5, 1.0, BASE, 1, {"positions": torch.tensor([0, 1, 2, 3, -(2**63)])}),
        ValueError, r"offset \(-5\) \+ positions \(-9223372036854775808\) overflows int64", "positions_underflow"),
    row("add_pe", lambda: (x3(), None, 5, 1.0, BASE, 1, {"positions": torch.tensor([0, 1, 2, 3, I64 - 5])}),
        ValueError, r"offset \(5\) \+ positions \(9223372036854775802\) overflows int64", "positions_overflow"),
    row("fill_table_", lambda: (torch.zeros(2, 8), 0, BASE, {"positions": torch.tensor([0, I64])}), ValueError,
        r"offset \(0\) \+ positions \(9223372036854775807\) overflows int64", "fill_positions_int64_max"),
    # frequencies given as a tensor (inv_freq)
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"inv_freq": torch.ones(5)}), ValueError,
        r"inv_freq must have shape \(4,\) \(one frequency per sin/cos pair of d_model 8", "inv_freq_length"),
    row("fill_table_", lambda: (torch.zeros(4, 8), 0, BASE, {"inv_freq": torch.ones(1, 4)}), ValueError,
        r"inv_freq must have shape \(4,\)", "fill_inv_freq_2d"),
    row("add_pe_", lambda: (x3(), None, 0, 1.0, BASE, 1, {"inv_freq": torch.ones(4, dtype=torch.int64)}), TypeError,
        r"inv_freq must be float32, float64, float16 or bfloat16, got", "inv_freq_int"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, 500.0, 1, {"inv_freq": torch.ones(4)}), ValueError,
        r"inv_freq gives the frequencies, so base, frequencies, .* must keep their defaults", "inv_freq_and_base"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"inv_freq": torch.ones(4), "frequency_rounding": "correct"}),
        ValueError, r"inv_freq gives the frequencies", "inv_freq_and_rounding"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"inv_freq": torch.ones(4, device="meta")}), ValueError,
        r"inv_freq is on meta but x is on cpu", "inv_freq_meta_x_cpu"),
    row("add_pe_", lambda: (x3(), None, 0, 1.0, BASE, 1, {"inv_freq": torch.ones(4, requires_grad=True)}),
        RuntimeError, r"inv_freq requires grad, but pe_ext does not differentiate", "inv_freq_requires_grad"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"frequency_rounding": "exact"}), ValueError,
        r"frequency_rounding must be 'float32' or 'correct', got 'exact'", "frequency_rounding"),
    row("fill_table_", lambda: (torch.zeros(4, 8), 0, BASE, {"layout": "cos_first"}), ValueError,
        r"layout must be 'interleaved', 'concatenated' or 'concatenated_cos_first', got 'cos_first'", "fill_layout"),
    # base, scale, seq_dim
    *[row(op, lambda base=base: (x3(), None, 0, 1.0, base, 1), ValueError,
          r"base must be a positive finite number", f"{op}_base_{base}")
      for op in ("add_pe", "add_pe_")
      for base in (0.0, -2.0, float("nan"), float("inf"), float("-inf"))],
    *[row("fill_table_", lambda base=base: (torch.zeros(4, 8), 0, base), ValueError,
          r"base must be a positive finite number", f"fill_base_{base}")
      for base in (0.0, -1.0, float("nan"), float("inf"))],
    *[row("add_pe_", lambda scale=scale: (x3(), None, 0, scale, BASE, 1), ValueError, r"scale must be finite",
          f"scale_{scale}")
      for scale in (float("nan"), float("inf"), float("-inf"))],
    *[row("add_pe_", lambda shape=shape, seq_dim=seq_dim: (x3(*shape), None, 0, 1.0, BASE, seq_dim), ValueError,
          r"seq_dim must index a dimension of x other than the last", f"seq_dim_{seq_dim}_of_{len(shape)}d")
      for shape, seq_dim in [((2, 5, 8), 2), ((2, 5, 8), -1), ((2, 5, 8), 3), ((2, 5, 8), -4), ((5, 8), 1),
                             ((5, 8), -3)]],
    # out= into tensors autograd tracks (the in-place forms follow torch's in-place rules: test_transforms.py)
    row("add_pe_out", lambda: (leaf_requiring_grad(2, 5, 8), None, 0, 1.0, BASE, 1, x3()), RuntimeError,
        r"x requires grad, but pe_ext::add_pe_out \(out=\) has no autograd formula", "out_x_requires_grad"),
    row("add_pe_out", lambda: (x3(), table().requires_grad_(), 0, 1.0, BASE, 1, x3()), RuntimeError,
        r"table requires grad, but pe_ext::add_pe_out", "out_table_requires_grad"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, leaf_requiring_grad(2, 5, 8)), RuntimeError,
        r"out requires grad, but pe_ext::add_pe_out", "out_requires_grad"),
    # writing into inference tensors outside inference mode
    row("add_pe_", lambda: (inference(x3()), None, 0, 1.0, BASE, 1), RuntimeError,
        r"x is an inference tensor \(made under torch.inference_mode\(\)\)", "inplace_inference"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, inference(x3())), RuntimeError,
        r"out is an inference tensor", "out_inference"),
    row("fill_table_", lambda: (inference(torch.zeros(4, 8)), 0, BASE), RuntimeError, r"out is an inference tensor",
        "fill_inference"),
    # dropout's seed
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"dropout": 0.1}), ValueError,
        r"dropout > 0 needs seed, a one-element int64 tensor", "dropout_without_seed"),
    row("add_pe_", lambda: (x3(), None, 0, 1.0, BASE, 1, {"dropout": 0.1, "seed": torch.tensor(3, dtype=torch.int32)}),
        TypeError, r"seed must be an int64 tensor, got", "seed_int32"),
    row("fill_table_", lambda: (torch.zeros(4, 8), 0, BASE, {"dropout": 0.1, "seed": torch.tensor([1, 2])}),
        ValueError, r"seed must hold one value, got shape \[2\]", "seed_two_values"),
    row("add_pe", lambda: (x3(), None, 0, 1.0, BASE, 1, {"dropout": 0.1, "seed": torch.tensor(3, device="meta")}),
        ValueError, r"seed is on meta but must be on the CPU or on x's device \(cpu\)", "seed_meta_x_cpu"),
    # writing into tensors whose elements share memory, or that share memory with what is read
    row("add_pe_", lambda: (x3(1, 5, 8).expand(3, 5, 8), None, 0, 1.0, BASE, 1), ValueError,
        r"x has elements that share memory \(an expanded or overlapping view\)", "inplace_expanded_batch"),
    row("add_pe_", lambda: (x3(2, 5, 1).expand(2, 5, 8), None, 0, 1.0, BASE, 1), ValueError,
        r"x has elements that share memory", "inplace_expanded_d_model"),
    row("add_pe_", lambda: (overlapping((2, 5, 8), (8, 4, 1)), None, 0, 1.0, BASE, 1), ValueError,
        r"x has elements that share memory", "inplace_overlapping_as_strided"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, x3(1, 5, 8).expand(2, 5, 8)), ValueError,
        r"out has elements that share memory", "out_expanded"),
    row("add_pe_out", lambda: (x3(), None, 0, 1.0, BASE, 1, overlapping((2, 5, 8), (1, 8, 1))), ValueError,
        r"out has elements that share memory", "out_overlapping_as_strided"),
    row("fill_table_", lambda: (torch.zeros(1, 8).expand(4, 8), 0, BASE), ValueError,
        r"out has elements that share memory", "fill_out_expanded"),
    row("add_pe_out", lambda: (x := x3(), None, 0, 1.0, BASE, 1, x), ValueError,
        r"out's memory overlaps x's", "out_is_x"),
    row("add_pe_out", lambda: ((b := x3(2, 6, 8))[:, :5], None, 0, 1.0, BASE, 1, b[:, 1:]), ValueError,
        r"out's memory overlaps x's", "out_overlaps_x"),
    row("add_pe_out", lambda: (x3(5, 8), t := table(), 0, 1.0, BASE, 0, t[:5]), ValueError,
        r"out's memory overlaps table's", "out_overlaps_table"),
    row("add_pe_", lambda: (*x_viewing_table(), 0, 1.0, BASE, 0), ValueError,
        r"x's memory overlaps table's", "inplace_x_overlaps_table"),
]


def snapshot(args):
    """Copies of the tensor arguments that have data, to show after a refused call that nothing was written."""
    return [a.detach().clone() if isinstance(a, torch.Tensor) and not a.is_meta else None for a in args]


def assert_unchanged(args, before):
    for arg, copy in zip(args, before):
        if copy is not None:
            assert torch.equal(arg.detach(), copy), "a refused call wrote into its arguments"


def assert_refused(fn, args, error, match):
    before = snapshot(args)
    with pytest.raises(error, match=match) as caught:
        fn(*args)
    assert type(caught.value) is error  # not a subclass: ValueError and TypeError exactly, as TORCH_CHECK_VALUE/TYPE
    assert str(caught.value).startswith("pe_ext: ")
    assert_unchanged(args, before)


IMPLS = {"extension": lambda op: getattr(torch.ops.pe_ext, op),
         "fallback": lambda op: getattr(pe_ext.sinusoidal.fallback, op)}


def call_op(fn, op):
    """fn called with OP_ROWS' argument lists, base moved to its keyword; a trailing dict holds other keywords."""
    def call(*args):
        options = args[-1] if isinstance(args[-1], dict) else {}
        args = args[:-1] if options else args
        if op == "fill_table_":
            out, offset, base = args
            return fn(out, offset, base=base, **options)
        x, table, offset, scale, base, seq_dim, *out = args
        return fn(x, table, offset, scale, seq_dim, *out, base=base, **options)

    return call


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,make,error,match", OP_ROWS)
def test_op_refuses_bad_input(impl, op, make, error, match):
    assert_refused(call_op(IMPLS[impl](op), op), make(), error, match)


# The public functions and the module: what they check before (or instead of) the ops.
PUBLIC_ROWS = [
    row(lambda: pe_ext.PositionalEncoding(0), lambda: (), ValueError, r"d_model must be an int >= 1, got 0",
        "module_d_model_0"),
    row(lambda: pe_ext.PositionalEncoding(-8), lambda: (), ValueError, r"d_model must be an int >= 1",
        "module_d_model_neg"),
    row(lambda: pe_ext.PositionalEncoding(8, max_len=-1), lambda: (), ValueError, r"max_len must be an int >= 1, got -1",
        "module_max_len_neg"),
    *[row(lambda base=base, buffer=buffer: pe_ext.PositionalEncoding(8, 16, base=base, buffer=buffer), lambda: (), ValueError,
          r"base must be (a positive )?finite", f"module_base_{base}_{buffer}")
      for base in (0.0, -1.0, float("nan"), float("inf"))
      for buffer in ("table", "none")],
    *[row(lambda dropout=dropout: pe_ext.PositionalEncoding(8, 16, dropout=dropout), lambda: (), ValueError,
          r"dropout must be in \[0, 1\)", f"module_dropout_{dropout}")
      for dropout in (-0.1, 1.0, 1.5, float("nan"), float("inf"))],
    row(lambda: pe_ext.PositionalEncoding(8, 16, buffer="sometimes"), lambda: (), ValueError, r"buffer must be one of",
        "module_buffer"),
    row(lambda: pe_ext.sinusoidal_table(-1, 8), lambda: (), ValueError, r"num_positions \(max_len\) must be >= 0",
        "table_num_positions_neg"),
    row(lambda: pe_ext.sinusoidal_table(4, 0), lambda: (), ValueError, r"d_model must be > 0", "table_d_model_0"),
    *[row(lambda base=base: pe_ext.sinusoidal_table(4, 8, base=base), lambda: (), ValueError,
          r"base must be a positive finite number", f"table_base_{base}")
      for base in (0.0, -1.0, float("nan"), float("inf"))],
    row(lambda: pe_ext.sinusoidal_table(4, 8, dtype=torch.int32), lambda: (), TypeError,
        r"dtype must be float32, float64, float16 or bfloat16", "table_dtype_int"),
    row(lambda: pe_ext.sinusoidal_table(4, 8, offset=2**63), lambda: (), ValueError, r"offset .*fit in int64",
        "table_offset_2_63"),
    row(lambda: pe_ext.sinusoidal_table(4, 8, base=BASE, device="meta", offset=I64), lambda: (), ValueError,
        r"offset .* overflows int64", "table_meta_offset_overflow"),
    row(lambda x: pe_ext.add_sinusoidal_pe(x, offset=2**63), lambda: (x3(),), ValueError,
        r"offset must fit in int64, got 9223372036854775808", "fn_offset_2_63"),
    row(lambda x: pe_ext.add_sinusoidal_pe_(x, offset=-(2**70)), lambda: (x3(),), ValueError,
        r"offset must fit in int64", "fn_inplace_offset_below_int64"),
    row(lambda x, f: pe_ext.add_sinusoidal_pe(x, frequencies=f, inv_freq=f), lambda: (x3(), torch.ones(4)),
        ValueError, r"frequencies=tensor or inv_freq=tensor, not both", "fn_frequencies_twice"),
    row(lambda: pe_ext.PositionalEncoding(8, 16, persistent="no"), lambda: (), TypeError,
        r"persistent must be", "module_persistent"),
    row(lambda: pe_ext.PositionalEncoding(8, 16, frequencies=torch.ones(3)), lambda: (), ValueError,
        r"inv_freq must have shape \(4,\)", "module_frequencies_length"),
    row(lambda x, out: pe_ext.add_sinusoidal_pe(x, out=out), lambda: (leaf_requiring_grad(2, 5, 8), x3()),
        RuntimeError, r"x requires grad, but pe_ext::add_pe_out \(out=\)", "fn_out_requires_grad"),
    row(lambda x: pe_ext.add_sinusoidal_pe(x, scale=torch.nn.Parameter(torch.tensor(2.0))), lambda: (x3(),),
        TypeError, r"scale must be a number, got a Tensor .* pass alpha=", "fn_scale_tensor"),
    row(lambda x: pe_ext.add_sinusoidal_pe_(x, scale=torch.tensor(2.0)), lambda: (x3(),), TypeError,
        r"scale must be a number, got a Tensor", "fn_inplace_scale_tensor"),
    row(lambda x, t: pe_ext.add_sinusoidal_pe_(x, t), lambda: (x3(), table(dtype=torch.float64)), TypeError,
        r"table must be float32 or x's dtype", "fn_inplace_table_dtype"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x), lambda: (x3(2, 5, 16),), ValueError,
        r"x's last dimension \(16\) must equal d_model \(8\)", "module_width"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16, buffer="none")(x), lambda: (x3(2, 5, 4),), ValueError,
        r"x's last dimension \(4\) must equal d_model \(8\)", "module_width_no_table"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x), lambda: (torch.tensor(1.0),), ValueError,
        r"x must be 2-D.*got a 0-D", "module_x_0d"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x), lambda: (x3(1, 2, 5, 8),), ValueError,
        r"x must be 2-D.*got a 4-D", "module_x_4d"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x), lambda: (x3(dtype=torch.int64),), TypeError,
        r"x must be float32", "module_x_int"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x, offset=12), lambda: (x3(),), ValueError,
        r"offset 12 needs 17 positions, more than max_len=16", "module_past_max_len"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16, buffer="none")(x, offset=2**63), lambda: (x3(),), ValueError,
        r"offset must fit in int64", "module_offset_2_63"),
    row(lambda x: pe_ext.PositionalEncoding(8, 16)(x, offset=-1), lambda: (x3(),), ValueError,
        r"table rows start at position 0, but the call uses position -1", "module_offset_neg_table"),
    row(lambda: pe_ext.PositionalEncoding(8, 16).load_state_dict({"pe": torch.zeros(1, 20, 6)}), lambda: (), ValueError,
        r"the checkpoint's pe has width 6 \(its last dimension\), but this module's d_model is 8", "load_width"),
    row(lambda: pe_ext.PositionalEncoding(8, 16).load_state_dict({"pe": torch.zeros(2, 20, 8)}), lambda: (), ValueError,
        r"a checkpoint's pe must have shape \(1, max_len, d_model\), \(max_len, 1, d_model\), \(max_len, d_model\); "
        r"got \[2, 20, 8\]", "load_shape"),
]


@pytest.mark.parametrize("fn,make,error,match", PUBLIC_ROWS)
def test_public_api_refuses_bad_input(fn, make, error, match):
    assert_refused(fn, make(), error, match)


@pytest.mark.skipif(FORCED_FALLBACK, reason="already running under the fallback")
def test_the_table_under_the_fallback():
    """The public rows reach the ops through whatever is registered; run the whole table with the fallback
    registered under the op names (no compiled extension loaded), too."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
         os.path.join("tests", "sinusoidal", "test_errors.py")],
        env={**os.environ, "PE_EXT_FORCE_FALLBACK": "1"}, cwd=root, capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
