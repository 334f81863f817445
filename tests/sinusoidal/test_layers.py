"""The ESPnet- and fairseq-style layers and the growing table, against those projects' formulas."""

from __future__ import annotations

import math

import pytest
import torch

import pe_ext
from tests.sinusoidal.oracle import (
    EspnetPositionalEncoding,
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


@pytest.mark.parametrize("form", ["positions", "start_positions"])
def test_grow_follows_explicit_positions(form):
    """KV-cache decoding past max_len: the table grows to the largest position asked for; without grow, the op
    refuses positions past the table."""
    starts = torch.tensor([4, 20])
    ids = starts[:, None] + torch.arange(3)
    kwargs = {"positions": ids} if form == "positions" else {"start_positions": starts}
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"positions up to 23 need 24 table rows, but the table has 10"):
        pe_ext.PositionalEncoding(8, max_len=10)(x, offset=1, **kwargs)
    module = pe_ext.PositionalEncoding(8, max_len=10, grow=True)
    out = module(x, offset=1, **kwargs)
    assert module.max_len == 24 and module.pe.shape == (1, 24, 8)
    atol, rtol = tolerance(torch.float32, 24, 4.0)
    expected = x.double() + oracle_pe((ids + 1).reshape(-1), 8).reshape(2, 3, 8)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("length", [40, 100])  # within max_len, and past it (both tables grow)
def test_espnets_layers_and_their_gradients(length):
    """ESPnet's ScaledPositionalEncoding is x + alpha * pe (x unscaled), its PositionalEncoding x * sqrt(d_model) +
    pe: pe_ext's ScaledPositionalEncoding and PositionalEncoding(scale=sqrt(d_model)) against ESPnet's code."""
    d_model = 32
    x = torch.randn(3, length, d_model, requires_grad=True)
    for ours, espnet in [(pe_ext.ScaledPositionalEncoding(d_model, max_len=64, alpha=0.5),
                          EspnetPositionalEncoding(d_model, 0.0, max_len=64, scaled=True)),
                         (pe_ext.PositionalEncoding(d_model, max_len=64, scale=math.sqrt(d_model), grow=True),
                          EspnetPositionalEncoding(d_model, 0.0, max_len=64))]:
        if espnet.scaled:
            with torch.no_grad():
                espnet.alpha.fill_(0.5)
        out, expected = ours(x), espnet(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-6)
        upstream = torch.randn_like(out)
        params = [p for p in (getattr(ours, "alpha", None),) if p is not None]
        espnet_params = [espnet.alpha] if espnet.scaled else []
        for got, want in zip(torch.autograd.grad(out, (x, *params), upstream),
                             torch.autograd.grad(expected, (x, *espnet_params), upstream)):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)


def test_scaled_positional_encoding_state_dict_is_espnets():
    """alpha alone, loaded both ways; ESPnet's legacy checkpoints (v0.5.2 and before) also saved pe, which ESPnet
    drops on load, and so does pe_ext."""
    ours, espnet = pe_ext.ScaledPositionalEncoding(16, max_len=20), EspnetPositionalEncoding(16, 0.1, scaled=True)
    assert list(ours.state_dict()) == list(espnet.state_dict()) == ["alpha"]
    espnet.load_state_dict({"alpha": torch.tensor(0.25)})
    ours.load_state_dict(espnet.state_dict())
    assert ours.alpha.item() == 0.25
    ours.load_state_dict({"alpha": torch.tensor(0.75), "pe": torch.zeros(1, 7, 16)})
    assert ours.alpha.item() == 0.75 and ours.pe.shape == (1, 20, 16) and ours.pe.abs().sum() > 0
    espnet.load_state_dict(ours.state_dict())
    assert espnet.alpha.item() == 0.75
    ours.reset_parameters()
    assert ours.alpha.item() == 1.0 == pe_ext.ScaledPositionalEncoding(16).alpha.item()


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
