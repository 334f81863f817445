"""Positions beyond offset + l (per-sequence starts, explicit ids, fairseq padding), alpha, the embedding op, and
their gradients, on every implementation, against the float64 oracle."""

from __future__ import annotations

import pytest
import torch

import pe_ext
from tests.helpers import requires_extension
from tests.sinusoidal.impls import IMPLS
from tests.sinusoidal.oracle import fairseq_sinusoidal_embedding, oracle_encoding, tolerance

ENCODINGS = {"paper": {}, "fairseq": {"frequencies": "timescales", "layout": "concatenated"}}


def expected_with_ids(x, ids, offset=0, scale=1.0, alpha=1.0, padding_idx=-1, encoding=None):
    """x * scale + alpha * pe(offset + ids) in float64; ids broadcast against x without its last dimension."""
    ids = torch.broadcast_to(ids, x.shape[:-1]) + offset
    pe = oracle_encoding(ids.reshape(-1), x.shape[-1], **(encoding or {})).reshape(*ids.shape, -1)
    pe = torch.where((ids == padding_idx).unsqueeze(-1), torch.zeros_like(pe), pe)
    return x.double() * scale + alpha * pe


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_explicit_position_ids(impl, encoding, mode, dtype):
    x = torch.randn(4, 9, 24).to(dtype)
    ids = torch.randint(0, 50, (4, 9))  # repeats and any order
    table = pe_ext.sinusoidal_table(60, 24, dtype=dtype, **encoding) if mode == "table" else None
    out = impl(x, table, 3, 1.0, 10000.0, 1, positions=ids, **encoding)
    atol, rtol = tolerance(dtype, 60, 4.0)
    torch.testing.assert_close(out.double(), expected_with_ids(x, ids, 3, encoding=encoding), atol=2 * atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("layout", ["batch_first", "seq_first", "2d"])
def test_ids_follow_x_layout_and_can_be_shared(impl, layout):
    if layout == "batch_first":
        x, seq_dim, ids = torch.randn(3, 7, 16), 1, torch.randint(0, 30, (3, 7))
    elif layout == "seq_first":
        x, seq_dim, ids = torch.randn(7, 3, 16), 0, torch.randint(0, 30, (7, 3))
    else:
        x, seq_dim, ids = torch.randn(7, 16), 0, torch.randint(0, 30, (7,))
    atol, rtol = tolerance(torch.float32, 30, 4.0)
    torch.testing.assert_close(impl(x, None, 0, 1.0, 10000.0, seq_dim, positions=ids).double(),
                               expected_with_ids(x, ids), atol=atol, rtol=rtol)
    shared = torch.randint(0, 30, (7,), dtype=torch.int32)  # (seq_len,): the same ids for every batch row
    along_seq = shared[:, None] if seq_dim == 0 and x.dim() == 3 else shared
    torch.testing.assert_close(impl(x, None, 0, 1.0, 10000.0, seq_dim, positions=shared).double(),
                               expected_with_ids(x, along_seq.long()), atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
def test_padding_idx_gives_a_zero_pe_and_alpha_scales(impl, mode):
    tokens = torch.tensor([[5, 6, 7, 1, 1], [1, 1, 8, 9, 4]])  # right- and left-padded, padding_idx 1
    ids = pe_ext.make_positions(tokens, padding_idx=1)
    assert ids.tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]]
    x = torch.randn(2, 5, 32)
    table = pe_ext.sinusoidal_table(10, 32) if mode == "table" else None
    alpha = torch.tensor(0.75)
    out = impl(x, table, 0, 2.0, 10000.0, 1, positions=ids, padding_idx=1, alpha=alpha)
    atol, rtol = tolerance(torch.float32, 10, 8.0)
    torch.testing.assert_close(out.double(), expected_with_ids(x, ids, scale=2.0, alpha=0.75, padding_idx=1),
                               atol=atol, rtol=rtol)
    assert torch.equal(out[tokens == 1], 2.0 * x[tokens == 1])


@pytest.mark.parametrize("batch_first", [True, False])
def test_start_positions_per_sequence(batch_first):
    """Left-padded batches and KV-cache decoding: row b starts at offset + start_positions[b]."""
    starts = torch.tensor([0, 5, 17])
    x = torch.randn(3, 4, 16) if batch_first else torch.randn(4, 3, 16)
    out = pe_ext.add_sinusoidal_pe(x, start_positions=starts, offset=2, batch_first=batch_first)
    ids = starts[:, None] + torch.arange(4)
    atol, rtol = tolerance(torch.float32, 30, 4.0)
    torch.testing.assert_close(out.double(), expected_with_ids(x, ids if batch_first else ids.t(), offset=2),
                               atol=atol, rtol=rtol)


@pytest.mark.parametrize("bad,error,match", [
    ({"positions": torch.tensor([[0, -1, 2]])}, ValueError, "table rows start at position 0, but the call uses position -1"),
    ({"positions": torch.zeros(2, 3, dtype=torch.long)}, ValueError, "positions must have shape"),
    ({"positions": torch.zeros(1, 3)}, ValueError, "fractional .* positions index no table row"),
    ({"positions": torch.zeros(1, 3, dtype=torch.uint8)}, TypeError, "positions must be an int64 or int32"),
    ({"positions": torch.tensor([[0, 1, 99]])}, ValueError, "99 need 100 table rows, but the table has 10"),
    ({"padding_idx": -2}, ValueError, "padding_idx"),
    ({"alpha": torch.ones(2)}, ValueError, "alpha must hold one value"),
])
@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_bad_positions_are_refused_before_writing(impl, bad, error, match):
    x = torch.randn(1, 3, 8)
    before = x.clone()
    with pytest.raises(error, match=match):
        impl(x, pe_ext.sinusoidal_table(10, 8), 0, 1.0, 10000.0, 1, **bad)
    assert torch.equal(x, before)


@requires_extension
def test_inplace_refuses_bad_positions_without_touching_x():
    x = torch.randn(1, 3, 8)
    before = x.clone()
    with pytest.raises(ValueError, match="table rows start at position 0, but the call uses position -5"):
        pe_ext.add_sinusoidal_pe_(x, pe_ext.sinusoidal_table(8, 8), positions=torch.tensor([[0, -5, 1]]))
    assert torch.equal(x, before)


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_embedding_op(encoding):
    ids = torch.tensor([[0, 3, 1], [7, 1, 2]])
    emb = pe_ext.sinusoidal_embedding(ids, 10, padding_idx=1, offset=0, **encoding)
    assert emb.shape == (2, 3, 10)
    expected = expected_with_ids(torch.zeros(2, 3, 10), ids, padding_idx=1, encoding=encoding)
    atol, rtol = tolerance(torch.float32, 8)
    torch.testing.assert_close(emb.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dim", [16, 17])
def test_embedding_replaces_fairseq_sinusoidal_positional_embedding(dim):
    """fairseq: weights = get_embedding(...); weights[padding_idx] = 0; weights.index_select(make_positions(x))."""
    padding_idx = 1
    tokens = torch.tensor([[4, 5, 6, 7, 1, 1], [1, 9, 9, 9, 9, 9]])
    weights = fairseq_sinusoidal_embedding(16, dim)
    weights[padding_idx] = 0
    theirs = weights.index_select(0, pe_ext.make_positions(tokens, padding_idx).view(-1)).view(2, 6, dim)
    ours = pe_ext.sinusoidal_embedding(pe_ext.make_positions(tokens, padding_idx), dim, padding_idx=padding_idx,
                                       frequencies="timescales", layout="concatenated")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@requires_extension
@pytest.mark.parametrize("with_positions", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_gradients_of_x_table_and_alpha(with_positions, batch_first):
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    table = pe_ext.sinusoidal_table(12, 6, dtype=torch.float64).requires_grad_()
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[2, 2, 0, 9, 1], [1, 3, 4, 5, 6], [0, 0, 0, 1, 1]])
    ids = ids if batch_first else ids.t()

    def f(x, table, alpha):
        xx = x if batch_first else x.transpose(0, 1)
        return pe_ext.add_sinusoidal_pe(xx, table, offset=1, scale=1.5, alpha=alpha, padding_idx=3,
                                        positions=ids if with_positions else None, batch_first=batch_first)

    assert torch.autograd.gradcheck(f, (x, table, alpha))
    # alpha's gradient when pe is computed on the fly, too
    assert torch.autograd.gradcheck(
        lambda x, alpha: pe_ext.add_sinusoidal_pe(x, alpha=alpha, positions=ids if with_positions and batch_first
                                                  else None, padding_idx=3), (x, alpha))


@requires_extension
def test_opcheck_with_positions_and_alpha():
    x = torch.randn(2, 4, 8, requires_grad=True)
    kwargs = {"positions": torch.tensor([[0, 3, 1, 2], [5, 1, 1, 0]]), "padding_idx": 1,
              "alpha": torch.tensor(0.5, requires_grad=True)}
    torch.library.opcheck(torch.ops.pe_ext.add_pe.default, (x, pe_ext.sinusoidal_table(8, 8), 0, 2.0, 1), kwargs)
    torch.library.opcheck(torch.ops.pe_ext.add_pe.default, (x, None, 0, 2.0, 1), kwargs)
