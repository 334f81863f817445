"""The compat layers as modules: their projects' signatures, state_dicts both ways (old checkpoints' keys included),
dtype behaviour, fused dropout and gradients, against the re-implementations in tests/compat/reimpl.py."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from pe_ext.compat import detr, diffusers, espnet, fairseq, mae, t2t, tutorial, xtransformers
from tests.compat import reimpl
from tests.compat.common import ulps

# (ours, the project's): classes and functions.
PAIRS = [
    (tutorial.PositionalEncoding, reimpl.TutorialPositionalEncoding),
    (espnet.PositionalEncoding, reimpl.EspnetPositionalEncoding),
    (espnet.ScaledPositionalEncoding, reimpl.EspnetScaledPositionalEncoding),
    (espnet.LegacyRelPositionalEncoding, reimpl.EspnetLegacyRelPositionalEncoding),
    (espnet.RelPositionalEncoding, reimpl.EspnetRelPositionalEncoding),
    (espnet.StreamPositionalEncoding, reimpl.EspnetStreamPositionalEncoding),
    (fairseq.SinusoidalPositionalEmbedding, reimpl.FairseqSinusoidalPositionalEmbedding),
    (diffusers.Timesteps, reimpl.DiffusersTimesteps),
    (xtransformers.ScaledSinusoidalEmbedding, reimpl.XTransformersScaledSinusoidalEmbedding),
    (detr.PositionEmbeddingSine, reimpl.DetrPositionEmbeddingSine),
    (t2t.get_timing_signal_1d, reimpl.t2t_signal),
    (diffusers.get_timestep_embedding, reimpl.diffusers_embedding),
    (mae.get_2d_sincos_pos_embed, reimpl.mae_2d),
]


def _parameters(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[ours.__qualname__ for ours, _ in PAIRS])
def test_signatures_are_the_projects(ours, theirs):
    """The project's positional parameters, names and defaults, in order (pe_ext may add some after them: the
    ESPnet encodings' forward takes an offset, DETR's forward a mask)."""
    if isinstance(ours, type):
        assert _parameters(ours.__init__) == _parameters(theirs.__init__)
        ours, theirs = ours.forward, theirs.forward
    assert _parameters(ours)[: len(_parameters(theirs))] == _parameters(theirs)


# --- state_dict

def _round_trip(ours, theirs):
    """Each loads the other's state_dict strictly (theirs into ours first); returns the keys."""
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    return sorted(ours.state_dict())


def test_tutorial_checkpoints_load_both_ways():
    ours, theirs = tutorial.PositionalEncoding(16, max_len=300), reimpl.TutorialPositionalEncoding(16, max_len=300)
    assert ours.state_dict()["pe"].shape == (300, 1, 16)
    trained = {"pe": theirs.pe * 0.5}  # a table ours cannot have computed: loaded as it is
    ours.load_state_dict(trained)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(50, 2, 16)
    assert torch.equal(ours.eval()(x), theirs.eval()(x)) and torch.equal(theirs.pe, trained["pe"])


@pytest.mark.parametrize("kind,keys", [("PositionalEncoding", []), ("ScaledPositionalEncoding", ["alpha"]),
                                       ("LegacyRelPositionalEncoding", []), ("StreamPositionalEncoding", [])])
def test_espnet_state_dicts_and_the_legacy_pe_key(kind, keys):
    ours, theirs = getattr(espnet, kind)(8, 0.1, 32), getattr(reimpl, "Espnet" + kind)(8, 0.1, 32)
    if keys:
        with torch.no_grad():
            theirs.alpha.fill_(0.25)
    assert _round_trip(ours, theirs) == keys
    legacy = {**theirs.state_dict(), "pe": torch.zeros(1, 32, 8)}  # saved by ESPnet before v0.5.2
    ours.load_state_dict(dict(legacy))
    theirs.load_state_dict(dict(legacy))
    x = torch.randn(2, 10, 8)
    assert ulps(ours.eval()(x)[0] if "Rel" in kind else ours.eval()(x),
                theirs.eval()(x)[0] if "Rel" in kind else theirs.eval()(x), x * math.sqrt(8)) <= 2


def test_espnet_relative_state_dict_is_empty_and_refuses_a_pe_key_as_espnet():
    ours, theirs = espnet.RelPositionalEncoding(8, 0.1, 32), reimpl.EspnetRelPositionalEncoding(8, 0.1, 32)
    assert _round_trip(ours, theirs) == []
    for module in (ours, theirs):
        with pytest.raises(RuntimeError, match="Unexpected key"):
            module.load_state_dict({"pe": torch.zeros(1, 63, 8)})


def test_fairseq_state_dict_is_empty_and_old_checkpoints_load():
    ours, theirs = fairseq.SinusoidalPositionalEmbedding(8, 1), reimpl.FairseqSinusoidalPositionalEmbedding(8, 1)
    assert _round_trip(ours, theirs) == []
    ours.load_state_dict({"_float_tensor": torch.zeros(1), "weights": torch.zeros(1024, 8)})  # fairseq before 0.12
    assert ours.max_positions == 100_000 and ours.padding_idx == 1


def test_parameters_round_trip():
    ours, theirs = xtransformers.ScaledSinusoidalEmbedding(16), reimpl.XTransformersScaledSinusoidalEmbedding(16)
    with torch.no_grad():
        theirs.scale.fill_(3.0)
    assert _round_trip(ours, theirs) == ["scale"] and float(ours.scale.detach()) == 3.0
    for ours, theirs in ((diffusers.Timesteps(8, True, 0), reimpl.DiffusersTimesteps(8, True, 0)),
                         (detr.PositionEmbeddingSine(8), reimpl.DetrPositionEmbeddingSine(8))):
        assert _round_trip(ours, theirs) == []


# --- dtypes

def _within_one_ulp(ours, expected, magnitude=0.0):
    """Within one ulp of expected's dtype, of the result or of the largest term (magnitude) of a sum, whichever is
    larger (a sum rounded twice can differ by that from one rounded once)."""
    assert ours.dtype == expected.dtype
    eps = torch.finfo(expected.dtype).eps
    bound = eps * torch.maximum(expected.float().abs(), torch.as_tensor(magnitude).float().abs()).clamp(min=1.0)
    assert ((ours.float() - expected.float()).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_sums_are_rounded_once(dtype):
    """The tutorial (module converted to x's dtype: its table rounded, the sum rounded once, as pe_ext), ESPnet and
    tensor2tensor (which round pe, and ESPnet x * sqrt(d), to x's dtype before adding): pe_ext rounds the float32 sum
    once, within one ulp of the projects' and exactly the float32 sum rounded."""
    x = torch.randn(2, 40, 16).to(dtype)
    ours, theirs = tutorial.PositionalEncoding(16, max_len=64).to(dtype).eval(), \
        reimpl.TutorialPositionalEncoding(16, max_len=64).to(dtype).eval()
    _within_one_ulp(ours(x.transpose(0, 1)), theirs(x.transpose(0, 1)), x.transpose(0, 1))
    ours, theirs = espnet.PositionalEncoding(16, 0.0).eval(), reimpl.EspnetPositionalEncoding(16, 0.0).eval()
    _within_one_ulp(ours(x), theirs(x), x.float() * 4)
    _within_one_ulp(ours(x), reimpl.EspnetPositionalEncoding(16, 0.0)(x.float()).to(dtype), x.float() * 4)
    signal = reimpl.t2t_signal(40, 16)
    _within_one_ulp(t2t.add_timing_signal_1d(x), x + signal.to(dtype), x)
    _within_one_ulp(t2t.add_timing_signal_1d(x), (x.float() + signal).to(dtype), x)


def test_tutorial_keeps_x_dtype_where_the_tutorial_promotes():
    x = torch.randn(30, 2, 16).half()
    ours, theirs = tutorial.PositionalEncoding(16, max_len=64).eval(), reimpl.TutorialPositionalEncoding(16,
                                                                                                       max_len=64)
    assert theirs.eval()(x).dtype == torch.float32
    _within_one_ulp(ours(x), theirs(x).half(), x)


def test_float64_inputs_get_the_float32_tables_values():
    """ESPnet converts its float32 table to float64: pe_ext adds the same float32 values in float64."""
    x = torch.randn(2, 50, 8, dtype=torch.float64)
    ours, theirs = espnet.PositionalEncoding(8, 0.0).eval(), reimpl.EspnetPositionalEncoding(8, 0.0).eval()
    assert ours(x).dtype == torch.float64
    assert (ours(x) - theirs(x)).abs().max() <= 2 * 2.0**-23


def test_module_dtype_follows_half_as_the_projects():
    ours, theirs = fairseq.SinusoidalPositionalEmbedding(16, 1).half(), \
        reimpl.FairseqSinusoidalPositionalEmbedding(16, 1).half()
    tokens = torch.tensor([[5, 6, 7, 1]])
    _within_one_ulp(ours(tokens), theirs(tokens))
    ours, theirs = xtransformers.ScaledSinusoidalEmbedding(16), reimpl.XTransformersScaledSinusoidalEmbedding(16)
    x, far = torch.zeros(1, 64, 16), torch.arange(3000, 3064)
    accurate = theirs(x, far).half()  # x-transformers in float32, rounded
    ours.half()
    assert ours.inv_freq.dtype == torch.float32 and ours(x, far).dtype == torch.float16
    torch.testing.assert_close(ours(x, far).float(), accurate.float(), atol=2e-3, rtol=0)
    assert (theirs.half()(x, far).float() - accurate.float()).abs().max() > 0.1  # float16 angles, far out


@pytest.mark.parametrize("timesteps", [torch.arange(0, 1000, 9), torch.linspace(0, 999, 50, dtype=torch.float64),
                                       torch.linspace(0, 1, 50).half()], ids=["int64", "float64", "float16"])
def test_diffusers_output_is_float32_for_any_timesteps(timesteps):
    ours = diffusers.get_timestep_embedding(timesteps, 32, True, 0)
    assert ours.dtype == torch.float32 and ulps(ours, reimpl.diffusers_embedding(timesteps, 32, True, 0)) <= 2


# --- training: dropout fused, gradients

def test_dropout_is_fused_and_scaled_as_nn_dropout():
    p, x = 0.25, torch.randn(4, 200, 16)
    module = espnet.PositionalEncoding(16, p)
    expected = module.eval()(x)
    out = module.train()(x)
    kept = out != 0
    assert abs(1 - kept.float().mean() - p) < 0.02
    torch.testing.assert_close(out[kept], expected[kept] / (1 - p))
    relative = espnet.RelPositionalEncoding(16, p).train()
    scaled_x, pos_emb = relative(x)
    assert abs(1 - (scaled_x != 0).float().mean() - p) < 0.02 and abs(1 - (pos_emb != 0).float().mean() - p) < 0.05


def test_gradients_reach_x_and_the_learnable_scalars():
    x = torch.randn(2, 20, 8, requires_grad=True)
    ours, theirs = espnet.ScaledPositionalEncoding(8, 0.0), reimpl.EspnetScaledPositionalEncoding(8, 0.0)
    weights = torch.randn(2, 20, 8)
    (ours(x) * weights).sum().backward()
    ours_grads = x.grad.clone(), ours.alpha.grad.clone()
    x.grad = None
    (theirs(x) * weights).sum().backward()
    torch.testing.assert_close(ours_grads[0], x.grad)
    torch.testing.assert_close(ours_grads[1], theirs.alpha.grad, rtol=1e-5, atol=1e-5)
    ours, theirs = xtransformers.ScaledSinusoidalEmbedding(8), reimpl.XTransformersScaledSinusoidalEmbedding(8)
    ours(x).sum().backward()
    theirs(x).sum().backward()
    torch.testing.assert_close(ours.scale.grad, theirs.scale.grad, rtol=1e-5, atol=1e-5)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="dim must be a positive even"):
        xtransformers.ScaledSinusoidalEmbedding(7)
    with pytest.raises(ValueError, match="num_pos_feats"):
        detr.PositionEmbeddingSine(31)
    with pytest.raises(ValueError, match="normalize should be True"):
        detr.PositionEmbeddingSine(32, scale=1.0)
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of 4"):
        mae.get_2d_sincos_pos_embed(30, 4)
    with pytest.raises(ValueError, match="timesteps must be a 1-D"):
        diffusers.get_timestep_embedding(torch.zeros(2, 3), 8)
    with pytest.raises(ValueError, match="padding_idx must be >= 0 or None"):
        fairseq.SinusoidalPositionalEmbedding(8, -2)
