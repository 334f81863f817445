"""The ESPnet- and fairseq-style layers and the growing table, against those projects' formulas."""

from __future__ import annotations

import math

import pytest
import torch

import pe_ext
from tests.sinusoidal.oracle import (
    ClassicPositionalEncoding,
    fairseq_sinusoidal_embedding,
    oracle_add,
    oracle_pe,
    tolerance,
)


def test_grow_on_demand_keeps_dtype_and_device():
    module = pe_ext.PositionalEncoding(16, max_len=10, grow=True).to(torch.float64)
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    out = module(x)
    assert module.max_len == 25 and module.pe.shape == (1, 25, 16) and module.pe.dtype == torch.float64
    assert "pe" in module.state_dict()
    atol, rtol = tolerance(torch.float32, 25, 4.0)
    torch.testing.assert_close(out, oracle_add(x), atol=atol, rtol=rtol)
    module(torch.randn(1, 3, 16, dtype=torch.float64), offset=40)
    assert module.max_len == 50  # doubles, or as many as needed


def test_scaled_positional_encoding_is_espnets_and_learns_alpha():
    d_model = 32
    ours = pe_ext.ScaledPositionalEncoding(d_model, max_len=64, alpha=0.5)
    classic = ClassicPositionalEncoding(d_model, 64)
    ours.load_state_dict({"pe": classic.pe, "alpha": torch.tensor(0.5)})
    x = torch.randn(3, 40, d_model, requires_grad=True)
    out = ours(x)
    # ESPnet: x * self.xscale + self.alpha * self.pe[:, : x.size(1)]
    expected = x.detach() * math.sqrt(d_model) + 0.5 * classic.pe[:, :40]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(ours.alpha.grad, (grad * classic.pe[:, :40]).sum(), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(x.grad, grad * math.sqrt(d_model))
    ours.reset_parameters()
    assert ours.alpha.item() == 0.5


@pytest.mark.parametrize("dim", [16, 17])
def test_sinusoidal_positional_embedding_is_fairseqs(dim):
    padding_idx = 1
    tokens = torch.tensor([[4, 5, 6, 1], [7, 8, 1, 1]])
    layer = pe_ext.SinusoidalPositionalEmbedding(dim, padding_idx)
    weights = fairseq_sinusoidal_embedding(16, dim)
    weights[padding_idx] = 0
    positions = pe_ext.make_positions(tokens, padding_idx)
    expected = weights.index_select(0, positions.view(-1)).view(2, 4, dim)
    torch.testing.assert_close(layer(tokens), expected, atol=1e-5, rtol=0)
    assert layer.half()(tokens).dtype == torch.float16
    assert list(layer.state_dict()) == []


def test_module_forward_with_positions():
    module = pe_ext.PositionalEncoding(8, max_len=50)
    x = torch.randn(2, 3, 8)
    starts = torch.tensor([4, 10])
    ids = starts[:, None] + torch.arange(3)
    atol, rtol = tolerance(torch.float32, 13, 4.0)
    pe = oracle_pe(ids.reshape(-1), 8).reshape(2, 3, 8)
    torch.testing.assert_close(module(x, start_positions=starts).double(), x.double() + pe, atol=atol, rtol=rtol)
    torch.testing.assert_close(module(x, positions=ids).double(), x.double() + pe, atol=atol, rtol=rtol)
