"""Property-based tests: random shapes (0 and 1 sizes included), memory layouts (permuted dimensions, slices with
steps, storage offsets), dtypes, offsets, bases, scales, layouts of x (batch-first, sequence-first, 2-D), table or
on the fly, and every form of the op (new tensor, in place, out=, the CUDA kernel body over the CUDA grid, the
fallback), each against the float64 oracle. Writes must land exactly on the target's elements: the rest of the
buffer a strided target lives in is checked untouched, and x is checked unchanged."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pe_ext
import pe_ext.sinusoidal.fallback
from tests.helpers import DTYPES
from tests.sinusoidal.oracle import oracle_add, oracle_pe, tolerance

SENTINEL = 3.0  # fills the memory around a strided target; exact in every dtype, never a result here
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@st.composite
def memory_layouts(draw, ndim):
    """How a tensor's elements sit in memory: its dimensions in a random order, each sliced with a step, from a start
    (a storage offset; a start on the last dimension misaligns every row)."""
    perm = draw(st.permutations(range(ndim)))
    steps = draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=ndim, max_size=ndim))
    starts = draw(st.lists(st.integers(0, 1), min_size=ndim, max_size=ndim))
    return perm, steps, starts


def place(shape, layout, base_filler):
    """(base, view): a buffer made by base_filler(memory shape), and the view of `shape` into it that layout says."""
    perm, steps, starts = layout
    full = [n * s + a for n, s, a in zip(shape, steps, starts)]
    base = base_filler([full[p] for p in perm])
    logical = base.permute([perm.index(d) for d in range(len(shape))])
    return base, logical[tuple(slice(a, a + n * s, s) for n, s, a in zip(shape, steps, starts))]


def target_like(x, layout):
    """A write target of x's shape and dtype laid out as `layout` says, in a buffer full of SENTINEL, and a mask
    of the buffer elements the target covers."""
    base, view = place(x.shape, layout, lambda s: torch.full(s, SENTINEL, dtype=x.dtype))
    mask_base, mask_view = place(x.shape, layout, lambda s: torch.zeros(s, dtype=torch.bool))
    mask_view.fill_(True)
    return base, view, mask_base


def assert_only_target_written(base, mask):
    assert (base[~mask] == SENTINEL).all(), "a write landed outside the target"


@st.composite
def problems(draw):
    """One call: x (any layout), table or None, offset, scale, base, seq_dim."""
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["BLD", "LBD", "LD"]))
    batch, seq_len = draw(st.integers(0, 4)), draw(st.integers(0, 33))
    d_model = draw(st.one_of(st.integers(0, 9), st.integers(10, 70)))
    shape, seq_dim = {"BLD": ((batch, seq_len, d_model), 1), "LBD": ((seq_len, batch, d_model), 0),
                      "LD": ((seq_len, d_model), 0)}[kind]
    seed = draw(st.integers(0, 2**31 - 1))
    magnitude = draw(st.sampled_from([1.0, 1.0, 100.0]))  # of x's standard deviation
    generator = torch.Generator().manual_seed(seed)
    _, x = place(shape, draw(memory_layouts(len(shape))),
                 lambda s: (torch.randn(s, generator=generator, dtype=torch.float64) * magnitude).to(dtype))
    scale = draw(st.one_of(st.just(1.0), st.floats(-4.0, 4.0, allow_nan=False), st.just(math.sqrt(max(d_model, 1)))))
    base = draw(st.one_of(st.just(10000.0), st.floats(1.0, 1e5, allow_nan=False)))
    table = None
    if draw(st.booleans()):  # table mode: rows of the oracle, in float32 or x's dtype, any layout, 2-D or 3-D
        offset = draw(st.integers(0, 300))
        rows = offset + seq_len + draw(st.integers(0, 3))
        values = oracle_pe(torch.arange(rows), d_model, base).to(draw(st.sampled_from([torch.float32, dtype])))
        _, table = place(values.shape, draw(memory_layouts(2)), lambda s: torch.empty(s, dtype=values.dtype))
        table.copy_(values)
        if draw(st.booleans()):
            table = table.unsqueeze(0)  # the module's (1, rows, d_model) buffer
    else:
        offset = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**20)))
    return x, table, offset, scale, base, seq_dim


def bound(x, scale):
    """The largest |x * scale|: the magnitude the tolerance scales with."""
    return float(x.double().abs().max()) * abs(scale) if x.numel() else 0.0


def expected_and_tolerance(x, table, offset, scale, base, seq_dim):
    seq_len, magnitude = x.shape[seq_dim], bound(x, scale)
    if table is None:
        return oracle_add(x, offset, scale, base, seq_dim), tolerance(x.dtype, offset + seq_len, magnitude)
    rows = (table[0] if table.dim() == 3 else table)[offset : offset + seq_len].double()
    if x.dim() == 3:
        rows = rows.unsqueeze(1 - seq_dim)
    # The table's own values are the reference: only the kernel's math (float32 for all but float64) and the final
    # rounding remain.
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    atol, rtol = tolerance(math_dtype, 0, magnitude)
    out_atol, out_rtol = tolerance(x.dtype, 0, magnitude)
    return x.double() * scale + rows, (atol + out_atol, rtol + out_rtol)


def ops_of(backend):
    return torch.ops.pe_ext if backend == "extension" else pe_ext.sinusoidal.fallback


GRID = ["grid"] if pe_ext._backend.has_testing_ops() else []
FORMS = ["new", "in_place", "out", *GRID]


@settings(max_examples=1000, **SETTINGS)
@given(problem=problems(), backend=st.sampled_from(["extension", "fallback"]), form=st.sampled_from(FORMS),
       target_layout=st.data(), num_sms=st.integers(1, 200))
def test_every_form_matches_the_oracle(problem, backend, form, target_layout, num_sms):
    x, table, offset, scale, base, seq_dim = problem
    x_before = x.clone()
    layout = target_layout.draw(memory_layouts(x.dim()))
    ops = ops_of(backend)
    target_base = mask = None
    if form == "new":
        out = ops.add_pe(x, table, offset, scale, seq_dim, base=base)
    elif form == "in_place":
        target_base, out, mask = target_like(x, layout)
        out.copy_(x)
        ops.add_pe_(out, table, offset, scale, seq_dim, base=base)
    else:
        target_base, out, mask = target_like(x, layout)
        out.fill_(float("nan"))  # anything left unwritten shows
        if form == "out":
            ops.add_pe_out(x, table, offset, scale, seq_dim, out, base=base)
        else:  # the CUDA kernel's per-thread body over the grid a GPU with num_sms multiprocessors would get
            torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, offset, scale, seq_dim, num_sms, base=base)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected, (atol, rtol) = expected_and_tolerance(x_before, table, offset, scale, base, seq_dim)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    if form != "in_place":
        assert torch.equal(x, x_before), "x was modified"
    if target_base is not None:
        assert_only_target_written(target_base, mask)


@settings(max_examples=200, **SETTINGS)
@given(dtype=st.sampled_from(DTYPES), num_positions=st.integers(0, 40), d_model=st.integers(1, 70),
       offset=st.one_of(st.integers(0, 300), st.integers(0, 2**20)),
       base=st.one_of(st.just(10000.0), st.floats(1.0, 1e5, allow_nan=False)), layout=memory_layouts(2),
       builder=st.sampled_from(["fill_table_", "fallback", *GRID]),
       num_sms=st.integers(1, 200))
def test_table_builders_match_the_oracle(dtype, num_positions, d_model, offset, base, layout, builder, num_sms):
    target_base, out, mask = target_like(torch.empty(num_positions, d_model, dtype=dtype), layout)
    out.fill_(float("nan"))
    if builder == "grid":
        torch.ops.pe_ext._add_pe_grid_emulator(out, None, None, offset, 1.0, 0, num_sms, base=base)
    else:
        ops_of("extension" if builder == "fill_table_" else "fallback").fill_table_(out, offset, base=base)
    atol, rtol = tolerance(dtype, offset + num_positions)
    torch.testing.assert_close(out.double(), oracle_pe(torch.arange(offset, offset + num_positions), d_model, base),
                               atol=atol, rtol=rtol)
    assert_only_target_written(target_base, mask)


@settings(max_examples=200, **SETTINGS)
@given(problem=problems(), form=st.sampled_from(["function", "in_place", "out", "module"]),
       buffer=st.sampled_from([{}, {"persistent": False}, {"buffer": "none"}]), layout=st.data())
def test_public_api_matches_the_oracle(problem, form, buffer, layout):
    """add_sinusoidal_pe (and its in-place and out= forms) and PositionalEncoding, with batch_first as x's layout."""
    x, _, offset, scale, base, seq_dim = problem
    x_before = x.clone()
    batch_first = x.dim() == 2 or seq_dim == 1
    seq_len, d_model = x.shape[seq_dim], x.shape[-1]
    if form == "module" and d_model == 0:
        form = "function"  # a module needs d_model > 0
    if form == "function":
        out = pe_ext.add_sinusoidal_pe(x, offset=offset, scale=scale, base=base, batch_first=batch_first)
    elif form == "in_place":
        out = x.clone()
        assert pe_ext.add_sinusoidal_pe_(out, offset=offset, scale=scale, base=base, batch_first=batch_first) is out
    elif form == "out":
        _, out, _ = target_like(x, layout.draw(memory_layouts(x.dim())))
        assert pe_ext.add_sinusoidal_pe(x, offset=offset, scale=scale, base=base, batch_first=batch_first,
                                        out=out) is out
    else:
        offset = min(offset, 300)  # the module's table holds max_len (>= 1) rows
        module = pe_ext.PositionalEncoding(d_model, max_len=max(1, offset + seq_len), **buffer,
                                           batch_first=batch_first,
                                           scale=scale, base=base)
        out = module(x, offset=offset)
    seq_dim_of_x = seq_dim if x.dim() == 3 else 0
    # the module's float32 table under float64 data rounds pe to float32
    tol_dtype = torch.float32 if form == "module" and "buffer" not in buffer and x.dtype == torch.float64 else x.dtype
    atol, rtol = tolerance(tol_dtype, offset + seq_len, bound(x_before, scale))
    torch.testing.assert_close(out.double(), oracle_add(x_before, offset, scale, base, seq_dim_of_x),
                               atol=2 * atol if tol_dtype != x.dtype else atol, rtol=rtol)
    assert out.dtype == x.dtype
    if form != "in_place":
        assert torch.equal(x, x_before)
