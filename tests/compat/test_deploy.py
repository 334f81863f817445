"""TorchScript of the compat layers. Those whose forward is pe_ext.PositionalEncoding's under the project's signature
(the tutorial's, ESPnet's PositionalEncoding, ScaledPositionalEncoding and StreamPositionalEncoding) compile, equal to
eager (the fresh-process load is in tests/sinusoidal/test_deploy.py); the others are refused by name before
TorchScript meets their forward, and torch.jit.trace records them instead, equal to eager."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from pe_ext import compat
from pe_ext.compat import detr, diffusers, espnet, fairseq, tutorial, xtransformers

D_MODEL, MAX_LEN = 16, 64


def batch_first_calls(offset_name="offset"):
    x = torch.randn(2, 7, D_MODEL)
    return [((x,), {}), ((x, 5), {}), ((x,), {offset_name: 9})]


def espnet_scaled():
    layer = espnet.ScaledPositionalEncoding(D_MODEL, 0.1, MAX_LEN)
    with torch.no_grad():
        layer.alpha.fill_(0.75)
    return layer


# (the layer, its call forms as (args, kwargs))
SCRIPTED = {
    "tutorial.PositionalEncoding": (lambda: tutorial.PositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                    lambda: [((torch.randn(7, 2, D_MODEL),), {})]),
    "espnet.PositionalEncoding": (lambda: espnet.PositionalEncoding(D_MODEL, 0.1, MAX_LEN), batch_first_calls),
    "espnet.PositionalEncoding(reverse=True)": (lambda: espnet.PositionalEncoding(D_MODEL, 0.1, MAX_LEN, reverse=True),
                                                batch_first_calls),
    "espnet.ScaledPositionalEncoding": (espnet_scaled, batch_first_calls),
    "espnet.StreamPositionalEncoding": (lambda: espnet.StreamPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                        lambda: batch_first_calls("start_idx")),
}

# (the layer, its example inputs)
REFUSED = {
    "espnet.LegacyRelPositionalEncoding": (lambda: espnet.LegacyRelPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                           lambda: (torch.randn(2, 7, D_MODEL),)),
    "espnet.RelPositionalEncoding": (lambda: espnet.RelPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                     lambda: (torch.randn(2, 7, D_MODEL),)),
    "fairseq.SinusoidalPositionalEmbedding": (lambda: fairseq.SinusoidalPositionalEmbedding(D_MODEL, 1, MAX_LEN),
                                              lambda: (torch.randint(1, 9, (2, 7)),)),
    "detr.PositionEmbeddingSine": (lambda: detr.PositionEmbeddingSine(8, normalize=True),
                                   lambda: (torch.randn(2, 3, 5, 6), torch.rand(2, 5, 6) > 0.7)),
    "diffusers.Timesteps": (lambda: diffusers.Timesteps(D_MODEL, True, 1.0), lambda: (torch.rand(4) * 1000,)),
    "xtransformers.ScaledSinusoidalEmbedding": (lambda: xtransformers.ScaledSinusoidalEmbedding(D_MODEL),
                                                lambda: (torch.randn(2, 7, D_MODEL),)),
}


def test_every_compat_layer_is_scripted_or_refused_here():
    """A new compat layer must join one of the tables above. (hf holds the forwards pe_ext.patch gives Hugging
    Face's own classes, not layers.)"""
    layers = {f"{name}.{cls.__name__}" for name, module in vars(compat).items() if inspect.ismodule(module)
              and name != "hf" for cls in vars(module).values()
              if inspect.isclass(cls) and issubclass(cls, nn.Module) and cls.__module__ == module.__name__
              and not cls.__name__.startswith("_")}
    assert layers == {name.split("(")[0] for name in SCRIPTED} | set(REFUSED)


@pytest.mark.parametrize("name", SCRIPTED)
def test_torchscript_scripts_the_compat_layer_equal_to_eager(name):
    make, calls = SCRIPTED[name]
    layer = make().eval()
    scripted = torch.jit.script(layer)
    for args, kwargs in calls():
        torch.testing.assert_close(scripted(*args, **kwargs), layer(*args, **kwargs), atol=0, rtol=0)


@pytest.mark.parametrize("name", REFUSED)
def test_torchscript_refuses_the_other_compat_layers_by_name_and_jit_trace_records_them(name):
    make, inputs = REFUSED[name]
    layer = make().eval()
    with pytest.raises(NotImplementedError, match=rf"torch\.jit\.script cannot compile pe_ext\.compat\.{name}; the "
                                                  r"layers it compiles are .*pe_ext\.compat\.tutorial\."):
        torch.jit.script(layer)
    with pytest.raises(NotImplementedError, match=rf"cannot compile pe_ext\.compat\.{name}"):
        torch.jit.script(nn.Sequential(nn.Identity(), layer))  # in a model too
    example = inputs()
    traced = torch.jit.trace(layer, example, check_trace=False)
    again = inputs()
    torch.testing.assert_close(traced(*again), layer(*again), atol=0, rtol=0)
