"""64-bit indexing: every element offset past int32 must land where it should, in the CPU kernel and in the CUDA
kernel's body run over the CUDA grid.

- A tensor of more than 2**31 elements (slow; run in CI): bf16 x of shape (1, 2**31 // 1024 + 8, 1024), whose last
  positions sit past element 2**31. Two 4 GiB buffers at most (x, and one reused as out and then as the table);
  about 40 s on 2 cores. Checked at the last positions and a sample of rows, against the float64 oracle (on the fly)
  or exactly (table mode, whose values are chosen so every sum is exact in bf16).
- Small tensors whose strides reach past element 2**31 on one dimension at a time (fast; run under the sanitizers
  too): views into large buffers of which only the touched pages are ever resident.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import requires_extension, requires_testing_ops
from tests.sinusoidal.oracle import oracle_pe, tolerance

BATCH, D_MODEL = 1, 1024
SEQ_LEN = 2**31 // D_MODEL + 8
OFFSET = 3
NEEDED_GIB = 9


def mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


pytestmark = [requires_extension, requires_testing_ops]


def pattern(n, period, step):
    """Small multiples of `step`, periodic in the index: exact in bf16, and so are the sums used here."""
    return ((torch.arange(n) % period - period // 2) * step).to(torch.bfloat16)


def x_values(positions):
    """x[0, l, :] for each l, from the formula that filled x (not read back from x)."""
    return pattern(SEQ_LEN, 7, 1.0)[positions, None] + pattern(D_MODEL, 5, 8.0)[None, :]


def table_values(rows):
    return pattern(SEQ_LEN + OFFSET, 11, 0.25)[rows, None] + pattern(D_MODEL, 3, 0.5)[None, :]


def sample_positions():
    """The first and last positions (the last ones past element 2**31) and a random sample between."""
    generator = torch.Generator().manual_seed(6)
    ends = torch.cat([torch.arange(4), torch.arange(SEQ_LEN - 16, SEQ_LEN)])
    return torch.cat([ends, torch.randint(SEQ_LEN, (2000,), generator=generator)])


def check_on_the_fly(out, positions):
    expected = x_values(positions).double() + oracle_pe(positions + OFFSET, D_MODEL)
    atol, rtol = tolerance(torch.bfloat16, SEQ_LEN + OFFSET, 20.0)
    torch.testing.assert_close(out[0, positions].double(), expected, atol=atol, rtol=rtol)


@pytest.mark.slow
@pytest.mark.skipif(mem_available_gib() < NEEDED_GIB,
                    reason=f"needs {NEEDED_GIB} GiB of free memory, {mem_available_gib():.1f} GiB available")
def test_more_than_2_31_elements():
    assert BATCH * SEQ_LEN * D_MODEL > 2**31
    positions = sample_positions()
    x = torch.empty(BATCH, SEQ_LEN, D_MODEL, dtype=torch.bfloat16)
    torch.add(pattern(SEQ_LEN, 7, 1.0)[:, None], pattern(D_MODEL, 5, 8.0)[None, :], out=x[0])
    buffer = torch.empty(1, SEQ_LEN + OFFSET, D_MODEL, dtype=torch.bfloat16)
    out = buffer[:, :SEQ_LEN]

    # On the fly: the CPU kernel (out= form), then the CUDA kernel's body over an H100/H200-sized grid.
    torch.ops.pe_ext.add_pe_out(x, None, OFFSET, 1.0, 1, out)
    check_on_the_fly(out, positions)
    out[0, positions] = float("nan")  # the grid must rewrite them
    torch.ops.pe_ext._add_pe_grid_emulator(out, x, None, OFFSET, 1.0, 1, 132)
    check_on_the_fly(out, positions)
    assert torch.equal(x[0, positions], x_values(positions)), "x was modified"

    # Table mode: the buffer becomes a (1, rows, d_model) table. Table rows past element 2**31 are read for the
    # last positions; first by a short x far along the table (both kernels), then by all of x, in place.
    table = buffer
    torch.add(pattern(SEQ_LEN + OFFSET, 11, 0.25)[:, None], pattern(D_MODEL, 3, 0.5)[None, :], out=table[0])
    del out
    tail = x[:, -16:].clone()
    far = SEQ_LEN - 16
    rows = torch.arange(far, SEQ_LEN)
    expected_tail = x_values(rows) + table_values(rows + OFFSET)
    assert torch.equal(torch.ops.pe_ext.add_pe(tail, table, OFFSET + far, 1.0, 1)[0], expected_tail)
    grid_out = torch.empty_like(tail)
    torch.ops.pe_ext._add_pe_grid_emulator(grid_out, tail, table, OFFSET + far, 1.0, 1, 132)
    assert torch.equal(grid_out[0], expected_tail)

    torch.ops.pe_ext.add_pe_(x, table, OFFSET, 1.0, 1)
    assert torch.equal(x[0, positions], x_values(positions) + table_values(positions + OFFSET))


def view_past_int32(shape, huge_dim, dtype=torch.bfloat16):
    """A view of `shape` whose dimension huge_dim steps so far that its last index lies past element 2**31 (the
    other dimensions packed, in order, below it), into a buffer left untouched but for the view's elements."""
    huge_stride = 2**31 // max(shape[huge_dim] - 1, 1) + 7
    strides, inner = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        if d != huge_dim:
            strides[d], inner = inner, inner * shape[d]
    strides[huge_dim] = huge_stride
    last = sum((n - 1) * st for n, st in zip(shape, strides))
    assert last >= 2**31
    return torch.empty(last + 1, dtype=dtype).as_strided(shape, strides)


@pytest.mark.parametrize("huge_dim", [0, 1, 2], ids=["batch", "position", "d_model"])
@pytest.mark.parametrize("form", ["new", "in_place", "out", "grid"])
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
def test_strides_past_int32(huge_dim, form, mode):
    shape, offset = (3, 4, 40), 5
    x = view_past_int32(shape, huge_dim)
    x.copy_(torch.randn(shape))
    x_before = x.clone()
    table = None
    if mode == "table":  # a table whose rows step past element 2**31
        table = view_past_int32((offset + shape[1], shape[2]), 0, torch.float32)
        table.copy_(oracle_pe(torch.arange(offset + shape[1]), shape[2]))
    if form == "new":
        out = torch.ops.pe_ext.add_pe(x, table, offset, 1.5, 1)
    elif form == "in_place":
        out = x
        torch.ops.pe_ext.add_pe_(x, table, offset, 1.5, 1)
    else:
        out = view_past_int32(shape, huge_dim)
        out.fill_(float("nan"))
        if form == "out":
            torch.ops.pe_ext.add_pe_out(x, table, offset, 1.5, 1, out)
        else:
            torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, offset, 1.5, 1, 132)
    expected = x_before.double() * 1.5 + oracle_pe(torch.arange(offset, offset + shape[1]), shape[2])
    atol, rtol = tolerance(torch.bfloat16, offset + shape[1], 8.0)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
