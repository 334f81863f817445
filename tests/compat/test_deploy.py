"""ONNX of every compat layer by both torch.onnx exporters, run by onnxruntime at lengths other than the example's,
equal to eager. TorchScript of the compat layers: those whose forward is pe_ext.PositionalEncoding's under the
project's signature (the tutorial's, ESPnet's PositionalEncoding, ScaledPositionalEncoding and
StreamPositionalEncoding) compile, equal to eager (the fresh-process load is in tests/sinusoidal/test_deploy.py); the
others are refused by name before TorchScript meets their forward, and torch.jit.trace records them instead, equal to
eager."""

from __future__ import annotations

import inspect
import io

import pytest
import torch
from torch import nn

from pe_ext import compat
from pe_ext.compat import detr, diffusers, espnet, fairseq, tutorial, xtransformers
from tests.helpers import ONNX_TOLERANCE, op_types, requires_extension, requires_onnx

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


# ONNX

def _tokens(seq_len):
    tokens = torch.randint(2, 9, (2, seq_len))
    tokens[0, :2] = 1  # padding
    return tokens


def _image(size):
    mask = torch.zeros(2, size, size + 3, dtype=torch.bool)
    mask[0, :, size // 2:] = True  # padding of the first image's right half
    return torch.randn(2, 3, size, size + 3), mask


# (the layer, its inputs at a length, their names, the dynamic dimension(s) of each: {input: {dim: name}})
SEQ_FIRST, BATCH_FIRST = {"x": {0: "seq"}}, {"x": {1: "seq"}}
ONNX_LAYERS = {
    "tutorial.PositionalEncoding": (lambda: tutorial.PositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                    lambda n: (torch.randn(n, 2, D_MODEL),), SEQ_FIRST),
    "espnet.PositionalEncoding": (lambda: espnet.PositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                  lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "espnet.PositionalEncoding(reverse=True)": (lambda: espnet.PositionalEncoding(D_MODEL, 0.1, MAX_LEN, reverse=True),
                                                lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "espnet.ScaledPositionalEncoding": (espnet_scaled, lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "espnet.StreamPositionalEncoding": (lambda: espnet.StreamPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                        lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "espnet.LegacyRelPositionalEncoding": (lambda: espnet.LegacyRelPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                           lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "espnet.RelPositionalEncoding": (lambda: espnet.RelPositionalEncoding(D_MODEL, 0.1, MAX_LEN),
                                     lambda n: (torch.randn(2, n, D_MODEL),), BATCH_FIRST),
    "fairseq.SinusoidalPositionalEmbedding": (lambda: fairseq.SinusoidalPositionalEmbedding(D_MODEL, 1, MAX_LEN),
                                              lambda n: (_tokens(n),), {"input": {1: "seq"}}),
    "detr.PositionEmbeddingSine": (lambda: detr.PositionEmbeddingSine(8, normalize=True), _image,
                                   {"tensor_list": {2: "height", 3: "width"}, "mask": {1: "height", 2: "width"}}),
    "diffusers.Timesteps": (lambda: diffusers.Timesteps(D_MODEL, True, 1.0), lambda n: (torch.rand(n) * 1000,),
                            {"timesteps": {0: "batch"}}),
    # The TorchScript-based exporter makes x-transformers' default offset a graph input (after x: its name second).
    "xtransformers.ScaledSinusoidalEmbedding": (lambda: xtransformers.ScaledSinusoidalEmbedding(D_MODEL),
                                                lambda n: (torch.randn(2, n, D_MODEL),), {**BATCH_FIRST, "offset": {}}),
}
# The graph inputs that the TorchScript-based exporter adds for the forwards' defaults, fed their default values.
DEFAULT_INPUTS = {"offset": torch.tensor(0)}


def export_layer(layer, inputs, dynamic: dict, dynamo: bool) -> bytes:
    names = list(dynamic)
    dynamic = {name: axes for name, axes in dynamic.items() if axes}
    if dynamo:
        dims = {}
        shapes = {name: {dim: dims.setdefault(label, torch.export.Dim(label, min=3, max=48))
                         for dim, label in axes.items()} for name, axes in dynamic.items()}
        shapes = {name: shapes[name] for name in inspect.signature(layer.forward).parameters if name in shapes}
        return torch.onnx.export(layer, inputs, dynamo=True, dynamic_shapes=shapes,
                                 verbose=False).model_proto.SerializeToString()
    buffer = io.BytesIO()
    torch.onnx.export(layer, inputs, buffer, dynamo=False, input_names=names, dynamic_axes=dynamic)
    return buffer.getvalue()


def run_onnx_by_name(onnx_bytes: bytes, inputs, names) -> list[torch.Tensor]:
    """onnxruntime's outputs, fed by name: the TorchScript-based exporter drops an input that only gives a shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    given = {**DEFAULT_INPUTS, **dict(zip(names, inputs))}
    return [torch.from_numpy(out) for out in session.run(None, {i.name: given[i.name].numpy()
                                                                 for i in session.get_inputs()})]


def tolerance(name, inputs) -> dict:
    """float32's, but diffusers' frequencies are computed in its forward (exp of a range): the exporter folds them
    into a constant with its own exp, an ulp of float32 from torch's, which the angle timestep * frequency scales (up
    to 1000 * 2^-23 here)."""
    if name != "diffusers.Timesteps":
        return ONNX_TOLERANCE[torch.float32]
    return {"atol": float(inputs[0].abs().max()) * 2.0**-22, "rtol": 1e-6}


def test_every_compat_layer_is_exported_to_onnx_here():
    assert {name.split("(")[0] for name in ONNX_LAYERS} == {name.split("(")[0] for name in SCRIPTED} | set(REFUSED)


@requires_onnx
@pytest.mark.parametrize("name", ONNX_LAYERS)
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=[pytest.mark.slow, requires_extension])])
def test_onnx_exports_the_compat_layer_to_standard_ops_equal_to_eager(dynamo, name):
    make, inputs, dynamic = ONNX_LAYERS[name]
    layer = make().eval()
    onnx_bytes = export_layer(layer, inputs(10), dynamic, dynamo)
    assert {domain for domain, _ in op_types(onnx_bytes)} <= {""}  # the default ONNX domain only
    for length in (5, 29):
        again = inputs(length)
        with torch.no_grad():
            expected = layer(*again)
        outputs = run_onnx_by_name(onnx_bytes, again, list(dynamic))
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            torch.testing.assert_close(got, want, **tolerance(name, again))
