"""The drop-in module against the classic one: values, checkpoints both ways, buffer modes, devices and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pe_ext
from tests.sinusoidal.oracle import (
    ClassicPositionalEncoding,
    RowsPositionalEncoding,
    SeqFirstPositionalEncoding,
    float32_ulps,
    oracle_add,
    oracle_pe,
    tolerance,
)


def test_buffer_matches_classic_table_to_sin_cos_rounding():
    ours, classic = pe_ext.PositionalEncoding(512, max_len=5000), ClassicPositionalEncoding(512, max_len=5000)
    assert ours.pe.shape == classic.pe.shape == (1, 5000, 512)
    assert ours.pe.dtype == torch.float32 and not ours.pe.requires_grad
    # The same float32 frequencies and angles: only sin and cos round differently.
    assert float32_ulps(ours.pe, classic.pe).max() <= 2


def test_state_dict_round_trips_with_classic_module():
    ours, classic = pe_ext.PositionalEncoding(64, max_len=100), ClassicPositionalEncoding(64, max_len=100)
    assert list(ours.state_dict()) == list(classic.state_dict()) == ["pe"]
    ours.load_state_dict(classic.state_dict(), strict=True)
    x = torch.randn(3, 40, 64)
    assert torch.equal(ours(x), classic(x))  # same table, same float32 add: bit-identical
    fresh_classic = ClassicPositionalEncoding(64, max_len=100)
    fresh_classic.load_state_dict(pe_ext.PositionalEncoding(64, max_len=100).state_dict(), strict=True)
    assert torch.equal(fresh_classic.pe, pe_ext.PositionalEncoding(64, max_len=100).pe)


@pytest.mark.parametrize("buffer", [{}, {"persistent": False}, {"buffer": "none"}], ids=["persistent",
                                                                                       "non_persistent", "none"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_forward_matches_oracle_in_every_mode(buffer, batch_first):
    module = pe_ext.PositionalEncoding(48, max_len=300, **buffer, batch_first=batch_first)
    x = torch.randn(4, 300, 48) if batch_first else torch.randn(300, 4, 48)
    atol, rtol = tolerance(torch.float32, 300, 4.0)
    expected = oracle_add(x, seq_dim=1 if batch_first else 0)
    torch.testing.assert_close(module(x).double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(module(x[:, :7] if batch_first else x[:7], offset=5).double(),
                               oracle_add(x[:, :7] if batch_first else x[:7], offset=5, seq_dim=1 if batch_first else 0),
                               atol=atol, rtol=rtol)


def test_buffer_modes_and_state_dict():
    assert "pe" in pe_ext.PositionalEncoding(8, 10).state_dict()
    non_persistent = pe_ext.PositionalEncoding(8, 10, persistent=False)
    assert "pe" not in non_persistent.state_dict() and non_persistent.pe.shape == (1, 10, 8)
    assert "pe" in dict(non_persistent.named_buffers())
    without = pe_ext.PositionalEncoding(8, 10, buffer="none")
    assert without.pe is None and "pe" not in without.state_dict()
    # with no table there is no length limit
    x = torch.randn(2, 50, 8)
    atol, rtol = tolerance(torch.float32, 50, 4.0)
    torch.testing.assert_close(without(x).double(), oracle_add(x), atol=atol, rtol=rtol)
    # the buffer is never trained
    assert list(pe_ext.PositionalEncoding(8, 10).parameters()) == []


def test_longer_than_max_len_names_both_numbers():
    module = pe_ext.PositionalEncoding(16, max_len=100)
    with pytest.raises(ValueError, match=r"length 101.*max_len=100"):
        module(torch.randn(1, 101, 16))
    with pytest.raises(ValueError, match=r"offset 96.*101 positions.*max_len=100"):
        module(torch.randn(1, 5, 16), offset=96)


def test_two_dimensional_input():
    module = pe_ext.PositionalEncoding(16, max_len=20)
    x = torch.randn(20, 16)
    atol, rtol = tolerance(torch.float32, 20, 4.0)
    torch.testing.assert_close(module(x).double(), oracle_add(x), atol=atol, rtol=rtol)


@pytest.mark.parametrize("convert", ["half", "bfloat16", "double"])
def test_dtype_conversions_keep_working(convert):
    module = getattr(pe_ext.PositionalEncoding(32, max_len=64), convert)()
    dtype = {"half": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64}[convert]
    assert module.pe.dtype == dtype
    x = torch.randn(2, 64, 32, dtype=dtype)
    out = module(x)
    assert out.dtype == dtype
    # the table holds float32 values (rounded once more to dtype by the conversion)
    atol, rtol = tolerance(torch.float32 if dtype == torch.float64 else dtype, 64, 4.0)
    torch.testing.assert_close(out.double(), oracle_add(x), atol=2 * atol, rtol=rtol)


def test_float32_module_with_reduced_precision_input_keeps_its_dtype():
    module = pe_ext.PositionalEncoding(32, max_len=64)
    x = torch.randn(2, 64, 32, dtype=torch.bfloat16)
    out = module(x)
    assert out.dtype == torch.bfloat16
    atol, rtol = tolerance(torch.bfloat16, 64, 4.0)
    torch.testing.assert_close(out.double(), oracle_add(x), atol=atol, rtol=rtol)


def test_scale_and_dropout():
    d_model = 64
    module = pe_ext.PositionalEncoding(d_model, max_len=32, dropout=0.25, scale=math.sqrt(d_model))
    x = torch.randn(8, 32, d_model)
    module.eval()
    atol, rtol = tolerance(torch.float32, 32, 4.0 * 8)
    torch.testing.assert_close(module(x).double(), oracle_add(x, scale=8.0), atol=atol, rtol=rtol)
    module.train()
    out = module(x)
    dropped = (out == 0).float().mean().item()
    assert 0.2 < dropped < 0.3
    kept = out != 0
    torch.testing.assert_close(out[kept].double(), (oracle_add(x, scale=8.0) / 0.75)[kept], atol=atol * 2, rtol=rtol)


LAYERS = {
    "PositionalEncoding": lambda *args, **kwargs: pe_ext.PositionalEncoding(*args, **kwargs),
    "ScaledPositionalEncoding": lambda *args, **kwargs: pe_ext.ScaledPositionalEncoding(*args, **kwargs),
}
# (arguments, keywords, exception, message pattern): every constructor argument, of the wrong kind or out of range.
BAD_CONSTRUCTIONS = [
    ((0,), {}, ValueError, r"d_model must be an int >= 1, got 0"),
    ((8.0,), {}, TypeError, r"d_model must be an int, got 8.0 \(float\)"),
    ((True,), {}, TypeError, r"d_model must be an int, got True \(bool\)"),
    ((8, -1), {}, ValueError, r"max_len must be an int >= 1, got -1"),
    ((8, 0), {}, ValueError, r"max_len must be an int >= 1, got 0"),
    # the PyTorch tutorial's order, PositionalEncoding(d_model, dropout, max_len)
    ((512, 0.1), {}, TypeError, (r"max_len must be an int, got 0.1 \(float\); pe_ext's order is \(d_model, "
                                 r"max_len, dropout\): pass dropout by keyword, e.g. "
                                 r"\w*PositionalEncoding\(512, dropout=0.1\)")),
    ((512, 0.1), {"buffer": "none"}, TypeError, r"max_len must be an int, got 0.1"),
    ((8,), {"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
    ((8,), {"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
    ((8,), {"dropout": "0.1"}, TypeError, r"dropout must be a number, got '0.1' \(str\)"),
    ((8,), {"dropout": float("nan")}, ValueError, r"dropout must be in \[0, 1\), got nan"),
    ((8,), {"scale": float("inf")}, ValueError, r"scale must be finite, got inf"),
    ((8,), {"scale": torch.nn.Parameter(torch.tensor(2.0))}, TypeError,
     r"scale must be a number, got a Tensor; for a learnable factor on pe use ScaledPositionalEncoding \(alpha\)"),
    ((8,), {"base": 0.0}, ValueError, r"base must be a positive finite number"),
    ((8,), {"base": "10000"}, TypeError, r"base must be a number, got '10000' \(str\)"),
    ((8,), {"buffer": "sometimes"}, ValueError, r"buffer must be one of"),
    ((8,), {"batch_first": 1}, TypeError, r"batch_first must be True or False, got 1 \(int\)"),
    ((8,), {"grow": "yes"}, TypeError, r"grow must be True or False, got 'yes'"),
    # keywords the constructors do not document, which **encoding used to pass to every call
    ((8,), {"seed": 1}, TypeError, r"Encoding\(\) got unexpected keyword argument\(s\) \['seed'\]"),
    ((8,), {"padding_idx": 0}, TypeError, r"unexpected keyword argument\(s\) \['padding_idx'\]"),
    ((8,), {"max_length": 64}, TypeError,
     r"unexpected keyword argument\(s\) \['max_length'\]; its keywords beyond the named ones are \[.*'layout'"),
]


@pytest.mark.parametrize("layer", LAYERS.values(), ids=LAYERS)
@pytest.mark.parametrize("args,kwargs,error,match", BAD_CONSTRUCTIONS)
def test_constructors_check_every_argument(layer, args, kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        layer(*args, **kwargs)
    assert type(caught.value) is error


def test_other_constructor_arguments_are_checked():
    with pytest.raises(TypeError, match=r"alpha must be a number, got a Tensor"):
        pe_ext.ScaledPositionalEncoding(8, alpha=torch.tensor(0.5))
    for args, kwargs, error, match in [((0, 1), {}, ValueError, r"embedding_dim must be an int >= 1, got 0"),
                                       ((8, 1.0), {}, TypeError, r"padding_idx must be an int, got 1.0"),
                                       ((8, 1), {"seed": 3}, TypeError, r"keyword argument\(s\) \['seed'\]")]:
        with pytest.raises(error, match=match):
            pe_ext.SinusoidalPositionalEmbedding(*args, **kwargs)
    pe_ext.SinusoidalPositionalEmbedding(8, 1, 1024)  # fairseq's (embedding_dim, padding_idx, init_size)
    with pytest.raises(TypeError, match=r"add_sinusoidal_pe\(\) got unexpected keyword argument\(s\) \['bse'\]"):
        pe_ext.add_sinusoidal_pe(torch.randn(1, 2, 8), bse=500.0)


@pytest.mark.parametrize("layer", LAYERS.values(), ids=LAYERS)
def test_a_tensor_scale_assigned_later_is_refused_at_the_call(layer):
    """A learnable scale assigned after construction (it becomes a parameter) would lose its gradient as a float:
    every call refuses it, the plain inference call included."""
    module = layer(8).eval()
    module.scale = torch.nn.Parameter(torch.tensor(2.0))
    with pytest.raises(TypeError, match=r"scale must be a number, got a Tensor .* pass alpha="):
        module(torch.randn(2, 3, 8))


@pytest.mark.parametrize("name", ["alpha", "pe"])
def test_parametrized_alpha_and_table(name):
    """torch.nn.utils.parametrize moves a parameter or buffer under module.parametrizations: forward reads it as
    an attribute, and gets the parametrized value."""
    module = pe_ext.ScaledPositionalEncoding(8, max_len=16, alpha=0.5)

    class Double(nn.Module):
        def forward(self, t):
            return 2 * t

    torch.nn.utils.parametrize.register_parametrization(module, name, Double())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    alpha, pe = (1.0, oracle_pe(range(5), 8)) if name == "alpha" else (0.5, 2 * oracle_pe(range(5), 8))
    torch.testing.assert_close(module(x).double(), x + alpha * pe, atol=1e-5, rtol=1e-5)
    if name == "alpha":
        module(x).sum().backward()
        original = module.parametrizations.alpha.original
        torch.testing.assert_close(original.grad.double(), 2 * 2 * pe.sum(), atol=1e-4, rtol=1e-5)  # 2 samples


def test_reset_table_after_meta_construction():
    with torch.device("meta"):
        module = pe_ext.PositionalEncoding(16, max_len=40, persistent=False)
    assert module.pe.is_meta
    module = module.to_empty(device="cpu")
    module.reset_table()
    torch.testing.assert_close(module.pe[0], pe_ext.PositionalEncoding(16, max_len=40).pe[0], atol=0, rtol=0)


def test_meta_built_model_materializes_like_a_fresh_one():
    """A whole model built on the meta device, materialized with to_empty(): reset_table() restores every table
    (persistent or not); a checkpoint then restores the weights, and the model computes what a fresh one does."""
    def build():
        return nn.ModuleDict({
            "proj": nn.Linear(16, 16),
            "saved": pe_ext.PositionalEncoding(16, max_len=40),
            "computed": pe_ext.PositionalEncoding(16, max_len=50, persistent=False, batch_first=False,
                                                  scale=4.0, base=500.0),
            "on_the_fly": pe_ext.PositionalEncoding(16, buffer="none"),
        })

    fresh = build()
    with torch.device("meta"):
        model = build()
    assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, pe_ext.PositionalEncoding):
            module.reset_table()
    for name in ("saved", "computed"):
        assert not model[name].pe.is_meta
        torch.testing.assert_close(model[name].pe, fresh[name].pe, atol=0, rtol=0)
    classic = ClassicPositionalEncoding(16, max_len=40).pe
    torch.testing.assert_close(model["saved"].pe, classic, atol=4 * 40 * 2.0**-23, rtol=0)

    model.load_state_dict(fresh.state_dict())
    x = torch.randn(3, 40, 16)
    for name in ("saved", "computed", "on_the_fly"):
        torch.testing.assert_close(model[name](model["proj"](x)), fresh[name](fresh["proj"](x)), atol=0, rtol=0)


# Checkpoints in every shape real code saves, by the module that saves it, and the convention of ours that loads it.
CHECKPOINTS = {
    "seed_1_L_D": (ClassicPositionalEncoding, {"batch_first": True}, lambda pe: pe[0]),
    "tutorial_L_1_D": (SeqFirstPositionalEncoding, {"batch_first": False}, lambda pe: pe[:, 0]),
    "rows_L_D": (RowsPositionalEncoding, {"batch_first": True}, lambda pe: pe),
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
@pytest.mark.parametrize("their_len", [60, 300])  # shorter and longer than ours
def test_checkpoints_load_both_ways(kind, their_len):
    theirs_class, convention, rows_of = CHECKPOINTS[kind]
    theirs = theirs_class(16, their_len)
    with torch.no_grad():
        theirs.pe.add_(torch.randn_like(theirs.pe) * 1e-3)  # a trained table: its values must survive as loaded
    ours = pe_ext.PositionalEncoding(16, 200, **convention)
    ours.load_state_dict(theirs.state_dict())
    loaded = rows_of(theirs.pe)
    assert ours.max_len == max(200, their_len) and torch.equal(ours.pe[0, :their_len], loaded)
    if their_len < 200:  # extended with computed rows up to its own max_len
        assert torch.equal(ours.pe[0, their_len:], pe_ext.sinusoidal_table(200 - their_len, 16, offset=their_len))
    x = torch.randn(3, 50, 16) if convention["batch_first"] else torch.randn(50, 3, 16)
    assert torch.equal(ours(x), theirs(x))  # the same table rows, the same float32 add
    # and back: ours saves in the shape it loaded, which their module (of ours' length) loads strictly
    back = theirs_class(16, ours.max_len)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(rows_of(back.pe), ours.pe[0])


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_fresh_modules_save_what_the_classic_modules_load(kind):
    """A fresh module saves its convention's shape (batch_first: the seed's; seq-first: the tutorial's), or the one
    its checkpoint_shape names."""
    theirs_class, convention, rows_of = CHECKPOINTS[kind]
    ours = pe_ext.PositionalEncoding(16, 100, **convention)
    if kind == "rows_L_D":
        ours.checkpoint_shape = "(max_len, d_model)"
    theirs = theirs_class(16, 100)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert float32_ulps(rows_of(theirs.pe), rows_of(theirs_class(16, 100).pe)).max() <= 2


def test_a_grown_table_reloads_into_a_fresh_module_and_growing_keeps_loaded_rows():
    grown = pe_ext.PositionalEncoding(16, 10, grow=True)
    x = torch.randn(2, 50, 16)
    out = grown(x)
    assert grown.max_len == 50
    fresh = pe_ext.PositionalEncoding(16, 10)
    fresh.load_state_dict(grown.state_dict())
    assert fresh.max_len == 50 and torch.equal(fresh(x), out)
    trained = torch.randn(1, 10, 16)
    growing = pe_ext.PositionalEncoding(16, 10, grow=True)
    growing.load_state_dict({"pe": trained})
    growing(x)
    assert growing.max_len == 50 and torch.equal(growing.pe[:, :10], trained)
    assert torch.equal(growing.pe[0, 10:], pe_ext.sinusoidal_table(40, 16, offset=10))


def test_non_persistent_table_moves_but_is_not_saved():
    module = pe_ext.PositionalEncoding(8, 10, persistent=False)
    assert "pe" not in module.state_dict() and "pe" in dict(module.named_buffers())
    assert module.to(torch.float64).pe.dtype == torch.float64 and module.to("meta").pe.is_meta
    assert list(pe_ext.PositionalEncoding(8, 10, buffer="none").state_dict()) == []
