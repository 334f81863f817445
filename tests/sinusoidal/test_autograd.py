"""Gradients through every op: gradcheck in float64 (numerical differences are the independent reference), the table
gradient against plain-torch autograd of the same sum, and the module inside a model against the classic module. The
writing forms under autograd, forward mode and torch.func: test_transforms.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import pe_ext
from tests.sinusoidal.oracle import ClassicPositionalEncoding

# (shape, batch_first, seq_dim): batch-first (B, L, D), sequence-first (L, B, D), 2-D (L, D), and an odd d_model.
LAYOUTS = {
    "BLD": ((3, 5, 6), True, 1),
    "LBD": ((5, 3, 6), False, 0),
    "LD": ((5, 6), True, 0),
    "odd_d": ((2, 4, 7), True, 1),
}
OFFSET, SCALE = 3, 1.7


def make_table(mode, seq_len, d_model, requires_grad=True):
    """None, a (rows, d_model) table or the module's (1, rows, d_model) buffer shape, float64, with rows to spare."""
    if mode == "none":
        return None
    rows = torch.randn(OFFSET + seq_len + 2, d_model, dtype=torch.float64)
    return (rows if mode == "table_2d" else rows.unsqueeze(0)).requires_grad_(requires_grad)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("mode", ["none", "table_2d", "table_3d"])
def test_gradcheck(layout, mode):
    shape, batch_first, seq_dim = layout
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    table = make_table(mode, shape[seq_dim], shape[-1])
    inputs = (x,) if table is None else (x, table)

    def f(x, table=None):
        return pe_ext.add_sinusoidal_pe(x, table, offset=OFFSET, scale=SCALE, batch_first=batch_first)

    assert gradcheck(f, inputs)
    # The backward is plain torch ops, so it is itself differentiable (and batchable under vmap).
    assert gradgradcheck(f, inputs)
    assert gradcheck(f, inputs, check_batched_grad=True)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_gradients_equal_plain_torch_autograd(layout):
    """The registered formula against autograd of the same sum written in torch ops, for x and a float32 table."""
    shape, batch_first, seq_dim = layout
    seq_len, d_model = shape[seq_dim], shape[-1]
    x = torch.randn(shape, requires_grad=True)
    table = torch.randn(OFFSET + seq_len + 2, d_model, requires_grad=True)
    upstream = torch.randn(shape)
    grads = torch.autograd.grad(
        pe_ext.add_sinusoidal_pe(x, table, offset=OFFSET, scale=SCALE, batch_first=batch_first), (x, table), upstream)
    rows = table[OFFSET : OFFSET + seq_len]
    expected = x * SCALE + (rows if x.dim() == 2 else rows.unsqueeze(1 - seq_dim))
    expected_grads = torch.autograd.grad(expected, (x, table), upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert (grads[1][:OFFSET] == 0).all() and (grads[1][OFFSET + seq_len :] == 0).all()


def test_float32_table_gradient_keeps_float32_precision_under_bfloat16_x():
    """A float32 table under bfloat16 activations gets its gradient summed over the batch in float32, not rounded to
    bfloat16 first (which would lose 16 bits the table can hold)."""
    x = torch.randn(64, 6, 32, dtype=torch.bfloat16, requires_grad=True)
    table = torch.zeros(10, 32, requires_grad=True)
    upstream = torch.randn(64, 6, 32, dtype=torch.bfloat16)
    (grad_table,) = torch.autograd.grad(pe_ext.add_sinusoidal_pe(x, table, offset=2), (table,), upstream)
    assert grad_table.dtype == torch.float32
    expected = upstream.double().sum(0)
    torch.testing.assert_close(grad_table[2:8].double(), expected, atol=1e-5, rtol=1e-6)


def test_no_gradient_is_computed_for_what_does_not_require_it():
    x = torch.randn(2, 5, 8, requires_grad=True)
    table = torch.randn(5, 8)
    out = pe_ext.add_sinusoidal_pe(x, table, scale=2.0)
    (grad_x,) = torch.autograd.grad(out.sum(), (x,))
    torch.testing.assert_close(grad_x, torch.full_like(x, 2.0), atol=0, rtol=0)
    assert table.grad is None
    with torch.no_grad():
        assert not pe_ext.add_sinusoidal_pe(x).requires_grad


@pytest.mark.parametrize("batch_first", [True, False])
def test_module_inside_a_model_trains_like_the_classic_module(batch_first):
    """Linear -> PositionalEncoding -> Linear: the weight gradients equal those with the classic module (same table)."""
    torch.manual_seed(1)
    first, last = nn.Linear(8, 16), nn.Linear(16, 3)
    ours = pe_ext.PositionalEncoding(16, max_len=20, batch_first=batch_first)
    classic = ClassicPositionalEncoding(16, max_len=20)
    ours.load_state_dict(classic.state_dict())  # the same table, so the same forward values
    x = torch.randn(4, 20, 8)

    def weight_grads(pos):
        hidden = first(x if batch_first else x.transpose(0, 1))
        out = last(pos(hidden))
        out.square().mean().backward()
        grads = [p.grad.clone() for p in (*first.parameters(), *last.parameters())]
        first.zero_grad(), last.zero_grad()
        return grads

    seq_first_classic = classic if batch_first else (lambda h: classic(h.transpose(0, 1)).transpose(0, 1))
    for got, want in zip(weight_grads(ours), weight_grads(seq_first_classic)):
        torch.testing.assert_close(got, want)
    assert ours.pe.grad is None and not ours.pe.requires_grad
