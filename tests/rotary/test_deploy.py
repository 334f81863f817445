"""TorchScript of RotaryEmbedding: scripted equal to eager in every call form (the fresh-process load is in
tests/sinusoidal/test_deploy.py); the rope types whose frequencies follow the length are refused by name. torch.export
is in test_compile_export.py."""

from __future__ import annotations

import pytest
import torch

import pe_ext

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
