"""Every CPU-side implementation against the float64 oracle: dtypes, odd shapes, offsets, both layouts,
non-contiguous and misaligned inputs, empty inputs, large positions, table and on-the-fly modes."""

from __future__ import annotations

import pytest
import torch

import pe_ext
from tests.helpers import DTYPES, LAYOUTS, make_x, requires_extension, requires_testing_ops
from tests.sinusoidal.impls import IMPLS, check
from tests.sinusoidal.oracle import ClassicPositionalEncoding, oracle_encoding, oracle_pe, tolerance


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,seq_dim", [((3, 5, 24), 1), ((5, 3, 24), 0), ((7, 16), 0), ((2, 9, 17), 1)],
                         ids=["BLD", "LBD", "LD", "odd_d"])
def test_on_the_fly_matches_oracle(impl, dtype, layout, shape, seq_dim):
    x = make_x(shape, dtype, layout)
    check(impl(x, None, 3, 1.0, 10000.0, seq_dim), x, offset=3, seq_dim=seq_dim)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("table_dtype", ["float32", "same"])
@pytest.mark.parametrize("layout", ["contiguous", "sliced_d", "misaligned"])
def test_table_mode_adds_the_table_rows(impl, dtype, table_dtype, layout):
    d_model, offset = 32, 11
    table = ClassicPositionalEncoding(d_model, max_len=64).pe  # (1, 64, 32) float32, the classic buffer
    if table_dtype == "same":
        table = table.to(dtype)
    x = make_x((4, 6, d_model), dtype, layout)
    out = impl(x, table, offset, 1.0, 10000.0, 1)
    expected = x.double() + table[:, offset : offset + 6].double()
    if dtype in (torch.float32, torch.float64):  # one rounding of an exact sum: bit-exact
        torch.testing.assert_close(out, expected.to(dtype), atol=0, rtol=0)
    else:
        torch.testing.assert_close(out.double(), expected, atol=2 * tolerance(dtype, 0, 4)[0], rtol=0)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("table_layout", ["adjacent_rows", "rows_with_gaps", "none"])
@pytest.mark.parametrize("padding_idx", [-1, 20])
@pytest.mark.parametrize("dtype,dropout,x_layout", [
    (torch.float32, 0.0, "contiguous"), (torch.float32, 0.0, "sliced_d"), (torch.float32, 0.0, "permuted"),
    (torch.float64, 0.0, "contiguous"), (torch.bfloat16, 0.0, "contiguous"), (torch.float16, 0.0, "permuted"),
    (torch.float32, 0.2, "contiguous"), (torch.bfloat16, 0.2, "sliced_d")], ids=str)
def test_rows_across_several_tiles(impl, table_layout, padding_idx, dtype, dropout, x_layout):
    """Wide rows, so that the CPU kernel's tiles hold a few positions each and the sequence spans several: whole
    tiles written as one span (rows back to back in x, out and the table) or row by row (gaps between rows, a padding
    row among them), batch rows sharing each tile, the table read in place (float32, or float64 under float64 data)
    or widened, dropout's mask drawn by each element's own index."""
    d_model, seq_len, offset = 4096, 40, 3  # 256 KiB tiles: 16 positions of float, 8 of double
    x = make_x((3, seq_len, d_model), dtype, x_layout)
    table = None
    if table_layout == "adjacent_rows":
        table = ClassicPositionalEncoding(d_model, max_len=64).pe
    elif table_layout == "rows_with_gaps":  # a prefix of wider rows
        table = ClassicPositionalEncoding(2 * d_model, max_len=64).pe[..., :d_model]
    if table is not None and dtype == torch.float64:
        table = table.double()
    seed = torch.tensor(2**40 + 5)
    out = impl(x, table, offset, 1.0, 10000.0, 1, padding_idx=padding_idx, dropout=dropout, seed=seed)
    positions = torch.arange(offset, offset + seq_len)
    pe = oracle_pe(positions, d_model) if table is None else table[0, offset : offset + seq_len].double()
    pe = torch.where((positions == padding_idx).unsqueeze(-1), torch.zeros_like(pe), pe)
    expected = x.double() + pe
    if dropout > 0:  # the fallback's mask, which test_dropout checks against the Philox oracle
        mask = pe_ext.sinusoidal.fallback.add_pe(x, None, offset, 1.0, 1, dropout=dropout, seed=seed) != 0
        kept_apart = expected.abs() > 1e-2  # where x + pe cancels, a kept element can round to 0
        assert torch.equal((out != 0)[kept_apart], mask[kept_apart])
        expected = torch.where(mask, expected / (1 - dropout), torch.zeros_like(expected))
    if table is not None and dtype in (torch.float32, torch.float64) and dropout == 0:  # one rounding: bit-exact
        torch.testing.assert_close(out, expected.to(dtype), atol=0, rtol=0)
    else:
        atol, rtol = tolerance(dtype, offset + seq_len, 6.0 / (1 - dropout))
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("d_model", [1, 2, 3, 7, 8, 9, 33, 130])
def test_odd_and_small_d_model(impl, d_model):
    x = torch.randn(2, 5, d_model)
    out = impl(x, None, 0, 1.0, 10000.0, 1)
    check(out, x)
    if d_model % 2 == 1:  # the last column is a sin
        torch.testing.assert_close(out[..., -1] - x[..., -1], torch.sin(torch.arange(5.0) * oracle_freq(d_model - 1,
                                   d_model)).float().expand(2, 5), atol=1e-6, rtol=0)


def oracle_freq(column, d_model):
    return 10000.0 ** (-(2 * (column // 2)) / d_model)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("scale", [1.0, 0.5, 22.627416997969522])
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_scale_and_base(impl, scale, base):
    x = torch.randn(3, 8, 40)
    check(impl(x, None, 5, scale, base, 1), x, offset=5, scale=scale, base=base)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("shape", [(0, 5, 8), (3, 0, 8), (0, 8), (2, 3, 0)])
def test_empty_inputs(impl, shape):
    x = torch.randn(shape)
    out = impl(x, None, 0, 1.0, 10000.0, 1 if len(shape) == 3 else 0)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_positions_no_less_accurate_than_classic_table(impl, dtype):
    """Positions 100,000 to 131,071: the on-the-fly values are as accurate as the classic float32 table's."""
    d_model, start, length = 64, 100_000, 31_072
    classic = ClassicPositionalEncoding(d_model, max_len=start + length).pe[0, start:]
    truth = oracle_pe(torch.arange(start, start + length), d_model)
    x = torch.zeros(1, length, d_model, dtype=dtype)
    ours = impl(x, None, start, 1.0, 10000.0, 1)[0]
    classic_error = (classic.double() - truth).abs()
    our_error = (ours.double() - truth).abs()
    if dtype == torch.float64:
        assert our_error.max() < 1e-9  # float64 angles: no float32 rounding at all
    else:
        assert our_error.max() <= classic_error.max() * 1.05 + 1e-6
        assert our_error.mean() <= classic_error.mean() * 1.05 + 1e-7
    check(ours.unsqueeze(0), x, offset=start)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_batch_rows_share_the_position_values(impl):
    """Many batch rows and few positions (decoding shapes): every row gets its own position's values."""
    x = torch.randn(64, 1, 48)
    check(impl(x, None, 1234, 1.0, 10000.0, 1), x, offset=1234)
    x = torch.randn(3, 700, 8)  # many positions, narrow rows: several positions per block
    check(impl(x, None, 0, 1.0, 10000.0, 1), x)


@requires_testing_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_sms", [1, 132])
def test_table_builder_matches_oracle(dtype, num_sms):
    for build in (lambda out: torch.ops.pe_ext.fill_table_(out, 9),
                  lambda out: torch.ops.pe_ext._add_pe_grid_emulator(out, None, None, 9, 1.0, 0, num_sms)):
        out = torch.full((300, 37), float("nan"), dtype=dtype)
        build(out)
        atol, rtol = tolerance(dtype, 309)
        torch.testing.assert_close(out.double(), oracle_pe(torch.arange(9, 309), 37), atol=atol, rtol=rtol)


def grid_emulator(x, table=None, num_sms=1, **options):
    out = torch.full_like(x, float("nan"))  # a row the grid misses stays NaN
    torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, 0, 1.0, 1, num_sms, **options)
    return out


@requires_testing_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 9, 16])
@pytest.mark.parametrize("num_sms", [1, 4])
@pytest.mark.parametrize("case", ["computed", "table", "positions_per_row", "dropout"])
def test_grid_row_groups_reach_every_row_once(dtype, batch, num_sms, case):
    """The kernel body moves a thread's rows four at a time: along the batch where its block has four batch rows or
    more, along its own positions below that. Batch sizes around four, a sequence length that leaves groups partly
    empty, a row tail (d_model 28 in bfloat16), blocks of one or several batch rows (num_sms), per-row positions and
    dropout must still give every row its own pe, once."""
    d_model, seq_len = 28, 203
    x = torch.randn(batch, seq_len, d_model).to(dtype)
    ids = torch.arange(seq_len).expand(batch, seq_len)
    options = {}
    table = pe_ext.sinusoidal_table(2 * seq_len, d_model) if case == "table" else None
    if case == "positions_per_row":
        ids = torch.randint(0, 2 * seq_len, (batch, seq_len))
        options = {"positions": ids}
    if case == "dropout":
        options = {"dropout": 0.25, "seed": torch.tensor(77)}
    out = grid_emulator(x, table, num_sms, **options)
    expected = x.double() + oracle_encoding(ids.reshape(-1), d_model).reshape(batch, seq_len, d_model)
    atol, rtol = tolerance(dtype, 2 * seq_len, 4.0)
    if case == "dropout":  # the CPU kernel's mask, the kept values scaled by 1 / (1 - p)
        cpu = torch.ops.pe_ext.add_pe(x, None, 0, 1.0, 1, **options)
        assert torch.equal(out == 0, cpu == 0)
        expected = torch.where(cpu == 0, 0.0, expected / 0.75)
        atol /= 0.75
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@requires_testing_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d_model", [4096, 4098])
@pytest.mark.parametrize("num_sms", [1, 132])
@pytest.mark.parametrize("case", ["computed", "precise_angle", "float32_table", "positions_per_row", "concatenated"])
def test_grid_decode_rows_span_blocks(dtype, d_model, num_sms, case):
    """Decoding (batch 64, one position each): a thread owns one chunk, so a row of 4096 columns spans several blocks
    (1024 chunks of 4 in float32, 512 of 8 in bfloat16), each batch row a block row of its own; d_model 4098 adds a
    two-column tail, element by element, in the row's last block. Each case is its own kernel: pe computed (float32
    frequencies), precise_angle (float64 ones, reduced angle), the module's float32 table under the data's dtype,
    per-row positions (start_positions in decoding), the concatenated layout (a chunk inside the sin or the cos half)."""
    batch, offset = 64, 70_000
    x = torch.randn(batch, 1, d_model).to(dtype)
    positions = torch.full((batch, 1), offset)
    table, options, layout = None, {}, "interleaved"
    if case == "precise_angle":
        options = {"precise_angle": True}
    elif case == "float32_table":
        table = pe_ext.sinusoidal_table(offset + 1, d_model)  # float32 whatever x's dtype
    elif case == "positions_per_row":
        positions = torch.randint(0, 2 * offset, (batch, 1))
        options = {"positions": positions}
    elif case == "concatenated":
        layout = options["layout"] = "concatenated"
    out = torch.full_like(x, float("nan"))
    position_offset = 0 if case == "positions_per_row" else offset
    torch.ops.pe_ext._add_pe_grid_emulator(out, x, table, position_offset, 1.0, 1, num_sms, **options)
    expected = x.double() + oracle_encoding(positions.reshape(-1), d_model, layout=layout).reshape(batch, 1, d_model)
    atol, rtol = tolerance(dtype, int(positions.max()) + 1, 4.0)
    if case == "precise_angle":
        atol, rtol = tolerance(dtype, 1, 4.0)  # the reduced angle stays within 1e-6 whatever the position
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@requires_testing_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("case", ["plain", "fractional", "alpha_zero", "padding"])
def test_grid_in_place_groups(dtype, batch, case):
    """out is x (in place) while each thread holds four rows' loads before its first store: every row must still be
    read before it is written. Groups along the positions (batch 1) and along the batch (6 rows), with fractional
    positions (the kFractional kernel), alpha 0 (backward's mask pass: pe is 0, no sin/cos) and padding_idx."""
    seq_len, d_model = 37, 24
    x = torch.randn(batch, seq_len, d_model).to(dtype)
    positions = torch.arange(seq_len, dtype=torch.float64).expand(batch, seq_len)
    options, weight = {}, torch.ones(batch, seq_len, 1, dtype=torch.float64)
    if case == "fractional":
        positions = torch.rand(batch, seq_len, dtype=torch.float64) * 100 - 20
        options = {"positions": positions}
    elif case == "alpha_zero":
        options = {"alpha": torch.tensor(0.0)}
        weight.zero_()
    elif case == "padding":
        options = {"padding_idx": 5}
        weight[:, 5] = 0
    inout = x.clone()
    torch.ops.pe_ext._add_pe_grid_emulator(inout, inout, None, 0, 1.0, 1, 132, **options)
    pe = oracle_encoding(positions.reshape(-1), d_model).reshape(batch, seq_len, d_model)
    atol, rtol = tolerance(dtype, 100, 4.0)
    torch.testing.assert_close(inout.double(), x.double() + weight * pe, atol=atol, rtol=rtol)


@requires_testing_ops
def test_grid_kernel_checks_positions_the_host_could_not_read():
    """While a CUDA graph is captured the host cannot read positions, so the kernel checks each one against the
    table's rows itself (a device-side assert on a GPU). The emulator, shown fewer rows than the host checked, raises
    where a position falls outside them and computes the rest."""
    x = torch.randn(2, 6, 16)
    table = pe_ext.sinusoidal_table(20, 16)
    ids = torch.tensor([[0, 1, 2, 3, 4, 15], [5, 6, 7, 8, 9, 10]])
    out = grid_emulator(x, table, table_rows=16, positions=ids)
    torch.testing.assert_close(out, x + table[ids], atol=0, rtol=0)
    with pytest.raises(IndexError, match="offset \\+ positions outside the table"):
        grid_emulator(x, table, table_rows=15, positions=ids)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sinusoidal_table_api(dtype):
    table = pe_ext.sinusoidal_table(50, 12, offset=3, dtype=dtype)
    assert table.shape == (50, 12) and table.dtype == dtype
    atol, rtol = tolerance(dtype, 53)
    torch.testing.assert_close(table.double(), oracle_pe(torch.arange(3, 53), 12), atol=atol, rtol=rtol)


def test_outputs_keep_reduced_precision_dtypes():
    """The classic module promotes bf16 + fp32 to fp32; pe_ext keeps x's dtype."""
    x = torch.randn(2, 4, 16, dtype=torch.bfloat16)
    table = ClassicPositionalEncoding(16, 10).pe
    assert pe_ext.add_sinusoidal_pe(x, table).dtype == torch.bfloat16
    assert pe_ext.add_sinusoidal_pe(x).dtype == torch.bfloat16


@requires_extension
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
def test_outputs_prefetched_for_writing_come_out_whole(mode):
    """float32 outputs from 8 to 16 MiB are written 16 elements a step, each step prefetching the line 8 KiB ahead
    within its span, then 8 at a time, then one by one: into an output one element off a 16-byte boundary, with
    spans whose length is no multiple of 8, every element must come out right."""
    x = torch.randn(3, 1100, 1001)
    assert 8 * 2**20 <= x.numel() * x.element_size() < 16 * 2**20
    table = oracle_pe(torch.arange(5 + x.shape[1]), x.shape[2]).float() if mode == "table" else None
    out = torch.full((x.numel() + 1,), float("nan"))[1:].view_as(x)
    torch.ops.pe_ext.add_pe_out(x, table, 5, 1.0, 1, out)
    check(out, x, offset=5)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("dropout", "mode"), [(0.0, "on_the_fly"), (0.0, "table"), (0.2, "on_the_fly")])
def test_outputs_larger_than_the_cache_are_streamed_correctly(dtype, dropout, mode):
    """From 16 MiB the CPU kernel writes with non-temporal stores (float32 and float16 rows straight from registers,
    bfloat16 and dropout through scratch in 1024-element chunks), aligned ones after a head written as usual: into an
    output one element off a 16-byte boundary, with rows of an odd width, every span and row must come out whole, with
    the same dropout mask, whether pe is computed or read from a table."""
    x = torch.randn(2, 2200 * (1 if dtype == torch.float32 else 2), 2001).to(dtype)
    assert x.numel() * x.element_size() >= 16 * 2**20
    table = oracle_pe(torch.arange(5 + x.shape[1]), x.shape[2]).float() if mode == "table" else None
    out = torch.full((x.numel() + 1,), float("nan"), dtype=dtype)[1:].view_as(x)
    torch.ops.pe_ext.add_pe_out(x, table, 5, 1.0, 1, out, dropout=dropout, seed=torch.tensor(3))
    if dropout == 0:
        check(out, x, offset=5)
    else:
        reference = pe_ext.sinusoidal.fallback.add_pe(x, None, 5, 1.0, 1, dropout=dropout, seed=torch.tensor(3))
        atol, rtol = tolerance(dtype, 5 + x.shape[1], 4.0 / (1 - dropout))
        # The same mask, except where x + pe cancels to within rounding (x = 1.0 against pe = -0.99999994).
        kept_apart = reference.double().abs() > atol
        assert torch.equal((out == 0)[kept_apart], (reference == 0)[kept_apart])
        torch.testing.assert_close(out.double(), reference.double(), atol=atol, rtol=rtol)
