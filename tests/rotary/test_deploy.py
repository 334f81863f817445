"""ONNX by both torch.onnx exporters, run by onnxruntime (every form of the rotary op in one attention-like model);
TorchScript of RotaryEmbedding: scripted equal to eager in every call form (the fresh-process load is in
tests/sinusoidal/test_deploy.py); the rope types whose frequencies follow the length are refused by name. torch.export
is in test_compile_export.py."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import pe_ext
from tests.helpers import ONNX_TOLERANCE, op_types, requires_extension, requires_onnx, run_onnx

HEAD_DIM = 8

# Each layer, and its call forms as a function of a seed: (args, kwargs) with fresh tensors (in-place calls write them).
LAYERS = {
    "neox": lambda: pe_ext.RotaryEmbedding(HEAD_DIM),
    "gptj_partial_scaled_precise": lambda: pe_ext.RotaryEmbedding(HEAD_DIM, 500.0, rotary_dim=4, style="gptj",
                                                                  attention_scaling=0.5, precise_angle=True),
}


def layer_calls(seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 4, 7, HEAD_DIM, generator=generator) for _ in range(2))  # (batch, heads, seq, head_dim)
    packed = torch.randn(9, 2, HEAD_DIM, generator=generator)
    return [((q,), {}), ((q, k[:, :2]), {}), ((q, k), {"offset": 5}),
            ((q, k), {"positions": torch.randint(0, 50, (2, 7), generator=generator)}),
            ((q.transpose(1, 2), k.transpose(1, 2)), {"layout": "bshd"}),
            ((packed,), {"cu_seqlens": torch.tensor([0, 4, 9])}),
            ((q.clone(), k.clone()), {"inplace": True, "offset": 2})]


@pytest.mark.parametrize("name", LAYERS)
def test_torchscript_scripts_rotary_embedding_equal_to_eager(name):
    layer = LAYERS[name]()
    scripted = torch.jit.script(layer)
    for (args, kwargs), (eager_args, eager_kwargs) in zip(layer_calls(), layer_calls()):
        torch.testing.assert_close(scripted(*args, **kwargs), layer(*eager_args, **eager_kwargs), atol=0, rtol=0)


LENGTH_FOLLOWING = {
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                 "short_factor": [1.0, 1.5, 2.0, 2.5], "long_factor": [2.0, 3.0, 4.0, 5.0]},
}


@pytest.mark.parametrize("rope_type", LENGTH_FOLLOWING)
def test_torchscript_refuses_rope_types_that_follow_the_length_by_name(rope_type):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=64,
                                      rope_parameters=dict(LENGTH_FOLLOWING[rope_type]))
    with pytest.raises(NotImplementedError, match=rf"cannot compile pe_ext\.rotary\.modules\.RotaryEmbedding \(rope "
                                                  rf"type '{rope_type}' recomputes its frequencies"):
        torch.jit.script(pe_ext.RotaryEmbedding.from_config(config))


# ONNX

HEADS, KV_HEADS, MAX_POSITIONS = 4, 2, 64


class Attention(nn.Module):
    """Every form of the rotary op in one model, an output each: the layer (GQA, offset, positions per row, bshd,
    partial gptj with precise angles and attention_scaling), the function (base frequencies, shared positions, in
    place, packed tokens with cu_seqlens) and apply_rotary_pos_emb (Hugging Face's cos and sin: 3-D tables from the
    layer, both unsqueeze_dims, and a 2-D cache read at position_ids)."""

    NAMES = ("gqa_q", "gqa_k", "offset", "positions", "bshd", "gptj_partial_precise_far", "function_shared_positions",
             "in_place", "packed", "hf_q", "hf_k", "hf_bshd", "hf_cache")

    def __init__(self):
        super().__init__()
        self.rope = pe_ext.RotaryEmbedding(HEAD_DIM)
        self.partial = pe_ext.RotaryEmbedding(HEAD_DIM, 500.0, rotary_dim=4, style="gptj", attention_scaling=0.5,
                                              precise_angle=True)
        cache = torch.arange(MAX_POSITIONS, dtype=torch.float32)[:, None] * self.rope.inv_freq
        self.register_buffer("cos_cache", torch.cat((cache, cache), -1).cos(), persistent=False)
        self.register_buffer("sin_cache", torch.cat((cache, cache), -1).sin(), persistent=False)

    def forward(self, q, k, ids, cu_seqlens):
        steps = torch.arange(q.shape[2]) * 3 + 1
        packed = q[0].transpose(0, 1)  # (total_tokens = seq, heads, head_dim)
        cos, sin = self.rope.cos_sin(q, ids)
        hf_q, hf_k = pe_ext.apply_rotary_pos_emb(q, k, cos, sin)
        hf_bshd, _ = pe_ext.apply_rotary_pos_emb(q.transpose(1, 2), None, cos, sin, unsqueeze_dim=2)
        hf_cache, _ = pe_ext.apply_rotary_pos_emb(q, None, self.cos_cache.to(q.dtype), self.sin_cache.to(q.dtype),
                                                  ids)
        return (
            *self.rope(q, k),
            self.rope(q, offset=5),
            self.rope(q, positions=ids),
            self.rope(q.transpose(1, 2), layout="bshd"),
            self.partial(q, offset=100_003),  # where the float32 product would be ~1e-2 off
            pe_ext.apply_rotary(q, base=100.0, rotary_dim=6, positions=steps),
            pe_ext.apply_rotary(q.clone(), k.clone(), inplace=True, offset=2)[1],
            pe_ext.apply_rotary(packed, cu_seqlens=cu_seqlens, style="gptj"),
            hf_q, hf_k, hf_bshd, hf_cache,
        )


def attention_inputs(batch, seq_len, dtype=torch.float32):
    return (torch.randn(batch, HEADS, seq_len, HEAD_DIM).to(dtype), torch.randn(batch, KV_HEADS, seq_len,
                                                                               HEAD_DIM).to(dtype),
            torch.randint(0, MAX_POSITIONS, (batch, seq_len)), torch.tensor([0, seq_len // 3, seq_len]))


# The dynamo exporter runs torch.export, through which the fallback's checks cannot read explicit positions.
DYNAMO_EXPORTER = pytest.param(True, marks=[pytest.mark.slow, requires_extension])


def export_attention(model, inputs, dynamo: bool) -> bytes:
    """The model in ONNX with a dynamic batch and sequence length."""
    if dynamo:
        batch, seq = torch.export.Dim("batch", min=2, max=16), torch.export.Dim("seq", min=3, max=MAX_POSITIONS)
        shapes = {"q": {0: batch, 2: seq}, "k": {0: batch, 2: seq}, "ids": {0: batch, 1: seq}, "cu_seqlens": None}
        return torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=shapes,
                                 verbose=False).model_proto.SerializeToString()
    axes = {"q": {0: "batch", 2: "seq"}, "k": {0: "batch", 2: "seq"}, "ids": {0: "batch", 1: "seq"}}
    buffer = io.BytesIO()
    torch.onnx.export(model, inputs, buffer, dynamo=False, input_names=["q", "k", "ids", "cu_seqlens"],
                      dynamic_axes=axes)
    return buffer.getvalue()


@requires_onnx
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("dynamo", [False, DYNAMO_EXPORTER])
def test_onnx_export_of_every_rotary_form_runs_in_onnxruntime_like_eager(dynamo, dtype):
    """Standard ONNX ops only, run by onnxruntime at batch sizes and lengths other than the example's: equal to
    eager within a few ulps of float32, then one rounding to q's dtype."""
    model = Attention().eval().to(dtype)
    onnx_bytes = export_attention(model, attention_inputs(2, 10, dtype), dynamo)
    ops = op_types(onnx_bytes)
    assert {domain for domain, _ in ops} == {""}, ops  # the default ONNX domain only: no pe_ext op left
    assert {("", "Sin"), ("", "Cos"), ("", "Gather"), ("", "GatherND")} <= ops
    assert ("", "Pow") not in ops and ("", "Exp") not in ops  # the base's frequencies are constants
    for batch, seq_len in [(3, 7), (2, 23)]:
        inputs = attention_inputs(batch, seq_len, dtype)
        with torch.no_grad():
            expected = model(*inputs)
        outputs = run_onnx(onnx_bytes, inputs)
        assert len(outputs) == len(Attention.NAMES) == len(expected)
        for name, got, want in zip(Attention.NAMES, outputs, expected):
            assert got.dtype == want.dtype and got.shape == want.shape, name
            # HF's cos and sin (cos_sin, torch's ops in the graph too) are float32 whatever q's dtype: for float64 q
            # they carry onnxruntime's float32 Cos and Sin, an ulp of float32 from torch's.
            tolerance = ONNX_TOLERANCE[torch.float32 if name.startswith("hf") and dtype == torch.float64 else dtype]
            torch.testing.assert_close(got, want, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def export_layer(layer, q, dynamo: bool) -> bytes:
    if dynamo:
        seq = torch.export.Dim("seq", min=2, max=MAX_POSITIONS)
        return torch.onnx.export(layer, (q,), dynamo=True, dynamic_shapes={"q": {2: seq}},
                                 verbose=False).model_proto.SerializeToString()
    buffer = io.BytesIO()
    torch.onnx.export(layer, (q,), buffer, dynamo=False, input_names=["q"], dynamic_axes={"q": {2: "seq"}})
    return buffer.getvalue()


@requires_onnx
@pytest.mark.parametrize("dynamo", [False, DYNAMO_EXPORTER])
def test_onnx_exports_the_layer_itself_as_the_model(dynamo):
    """The layer as the exported model (its forward's defaults filled in by the TorchScript-based exporter)."""
    layer = pe_ext.RotaryEmbedding(HEAD_DIM, rotary_dim=6).eval()
    onnx_bytes = export_layer(layer, torch.randn(1, HEADS, 10, HEAD_DIM), dynamo)
    q = torch.randn(1, HEADS, 37, HEAD_DIM)
    torch.testing.assert_close(run_onnx(onnx_bytes, (q,))[0], layer(q), **ONNX_TOLERANCE[torch.float32])


@requires_onnx
@pytest.mark.parametrize("rope_type", LENGTH_FOLLOWING)
@pytest.mark.parametrize("dynamo", [False, DYNAMO_EXPORTER])
def test_onnx_export_refuses_rope_types_that_follow_the_length_by_name(dynamo, rope_type):
    """A graph captured at one length would keep that length's frequencies: refused, the rope type named."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=64,
                                      rope_parameters=dict(LENGTH_FOLLOWING[rope_type]))
    layer = pe_ext.RotaryEmbedding.from_config(config).eval()
    with pytest.raises(Exception) as refused:  # the dynamo exporter wraps the layer's error in its own
        export_layer(layer, torch.randn(1, HEADS, 10, HEAD_DIM), dynamo)
    chain = [refused.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any(isinstance(e, NotImplementedError) and f"rope type '{rope_type}' cannot be exported" in str(e)
               for e in chain), chain
