"""Against Hugging Face's own code (the installed transformers): its rope types' frequencies and scaling, its rotary
embedding's (cos, sin), its apply_rotary_pos_emb (bitwise in float32, closer to float64 in bfloat16/float16), and
tiny random models with pe_ext.patch (logits bitwise unchanged in float32, greedy generation with a KV cache
identical)."""

from __future__ import annotations

import copy

import pytest
import torch

import pe_ext
from tests.helpers import requires_extension
from tests.rotary.oracle import hf_inv_freq, oracle_angles, oracle_rotate

transformers = pytest.importorskip("transformers")
from transformers import modeling_rope_utils
from transformers.models.llama import modeling_llama
from transformers.models.phi3 import modeling_phi3

TINY = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}

ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 32,
                    "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "truncate": False},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
                 "short_factor": [1.0 + i / 16 for i in range(8)], "long_factor": [2.0 + i / 4 for i in range(8)]},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


def llama_config(rope_parameters):
    return transformers.LlamaConfig(**TINY, rope_parameters=copy.deepcopy(rope_parameters))


def hf_rope_init(config, **kwargs):
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type](config, **kwargs)


@pytest.mark.parametrize("name", ROPE_PARAMETERS)
def test_rope_init_is_bitwise_hf(name):
    config = llama_config(ROPE_PARAMETERS[name])
    inv_freq, scaling = pe_ext.rope_init(config)
    expected, expected_scaling = hf_rope_init(config)
    assert torch.equal(inv_freq, expected) and scaling == expected_scaling
    if name in ("dynamic", "longrope"):  # the length-dependent frequencies, at a length past the original
        seq_len = torch.tensor(300) if name == "dynamic" else 300
        inv_freq, _ = pe_ext.rope_init(config, seq_len=seq_len)
        assert torch.equal(inv_freq, hf_rope_init(config, seq_len=seq_len)[0])


@pytest.mark.parametrize("name", ["default", "yarn", "dynamic", "longrope"])
def test_rotary_embedding_cos_sin_is_bitwise_hf(name):
    """cos_sin follows HF's rotary embedding through length changes (dynamic grows and resets; longrope switches)."""
    config = llama_config(ROPE_PARAMETERS[name])
    ours, theirs = pe_ext.RotaryEmbedding.from_config(config), modeling_llama.LlamaRotaryEmbedding(config)
    x = torch.randn(2, 4, 8, dtype=torch.bfloat16)
    for length in (10, 300, 20):
        position_ids = torch.arange(length).expand(2, length)
        for got, expected in zip(ours.cos_sin(x, position_ids), theirs(x, position_ids)):
            assert torch.equal(got, expected), length


def hf_cos_sin(rotary_dim, positions, dtype, base=10000.0, scaling=1.0):
    inv_freq = hf_inv_freq(base, rotary_dim)
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


@requires_extension
@pytest.mark.parametrize("hf_apply,rotary_dim", [(modeling_llama.apply_rotary_pos_emb, 32),
                                                 (modeling_phi3.apply_rotary_pos_emb, 16)], ids=["llama", "phi3"])
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_apply_rotary_pos_emb_is_bitwise_hf_in_float32(hf_apply, rotary_dim, unsqueeze_dim):
    positions = torch.randint(0, 4096, (2, 7))
    cos, sin = hf_cos_sin(rotary_dim, positions, torch.float32, scaling=1.3)
    shape = (2, 4, 7, 32) if unsqueeze_dim == 1 else (2, 7, 4, 32)
    q, k = torch.randn(shape), torch.randn(shape[:2] + (1,) + shape[3:] if unsqueeze_dim == 2 else (2, 1, 7, 32))
    for got, expected in zip(pe_ext.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim),
                             hf_apply(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)):
        assert torch.equal(got, expected)


def test_apply_rotary_pos_emb_legacy_position_ids():
    """transformers <= 4.37 passed (seq, dim) caches and indexed their rows with position_ids."""
    cache_cos, cache_sin = hf_cos_sin(16, torch.arange(64), torch.float32)
    position_ids = torch.tensor([[5, 6, 7], [40, 41, 42]])
    q, k = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 3, 16)
    got = pe_ext.apply_rotary_pos_emb(q, k, cache_cos, cache_sin, position_ids)
    expected = modeling_llama.apply_rotary_pos_emb(q, k, cache_cos[position_ids], cache_sin[position_ids])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_is_at_least_as_close_to_float64_as_hf(dtype):
    """Against the float64 rotation by HF's float32 angles: HF rounds cos and sin to the data's dtype and rounds
    three times; pe_ext keeps float32 cos and sin (on the fly) or reads HF's, and rounds once."""
    positions = torch.arange(4096).expand(1, 4096)
    q = torch.randn(1, 2, 4096, 64).to(dtype)
    exact = oracle_rotate(q.transpose(1, 2), oracle_angles(positions, hf_inv_freq(10000.0, 64))).transpose(1, 2)
    cos, sin = hf_cos_sin(64, positions, dtype)
    hf = modeling_llama.apply_rotary_pos_emb(q, q, cos, sin)[0]
    fused = pe_ext.apply_rotary_pos_emb(q, q, cos, sin)[0]
    on_the_fly = pe_ext.apply_rotary(q)

    def error(x):
        return (x.double() - exact).abs().mean().item()

    assert error(fused) <= error(hf)
    assert error(on_the_fly) < 0.8 * error(hf)


@requires_extension
def test_rotary_embedding_applies_as_hf_rotates():
    """forward(q, k) on the fly against HF's rotary embedding + apply_rotary_pos_emb, through a dynamic length change."""
    config = llama_config(ROPE_PARAMETERS["dynamic"])
    ours, theirs = pe_ext.RotaryEmbedding.from_config(config), modeling_llama.LlamaRotaryEmbedding(config)
    for length in (12, 300):
        q, k = torch.randn(2, 4, length, 16), torch.randn(2, 2, length, 16)
        position_ids = torch.arange(length).expand(2, length)
        expected = modeling_llama.apply_rotary_pos_emb(q, k, *theirs(q, position_ids))
        for got, want in zip(ours(q, k), expected):
            torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)  # sin/cos roundings of the same angles
        assert torch.equal(ours.inv_freq, theirs.inv_freq)


def test_rotary_embedding_keeps_float32_frequencies():
    module = pe_ext.RotaryEmbedding(64, 10000.0).to(torch.bfloat16)
    assert module.inv_freq.dtype == torch.float32
    assert torch.equal(module.inv_freq, hf_inv_freq(10000.0, 64))


FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral": lambda: transformers.MistralConfig(**TINY),
    "qwen2": lambda: transformers.Qwen2Config(**TINY),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=16),
    "gemma": lambda: transformers.GemmaConfig(**TINY, head_dim=16),
    "phi3": lambda: transformers.Phi3Config(**{**TINY, "num_key_value_heads": 4}, partial_rotary_factor=0.5,
                                            pad_token_id=0, eos_token_id=1),
}


@requires_extension
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_models_are_unchanged(family):
    """Logits bitwise equal in float32; greedy generation with the KV cache gives the same tokens."""
    torch.manual_seed(0)
    config = FAMILIES[family]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(2, config.vocab_size, (2, 11))
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        modeling = type(model.model.layers[0].self_attn).__module__
        original = vars(__import__(modeling, fromlist=["_"]))["apply_rotary_pos_emb"]
        with pe_ext.patch(model) as patch:
            assert patch.names == [f"{modeling}.apply_rotary_pos_emb"]
            swapped = vars(__import__(modeling, fromlist=["_"]))["apply_rotary_pos_emb"]
            assert swapped is not original
            assert torch.equal(model(ids).logits, logits)
            assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), tokens)
        assert vars(__import__(modeling, fromlist=["_"]))["apply_rotary_pos_emb"] is original


def test_patch_dry_run_and_shared_swaps():
    config = transformers.LlamaConfig(**TINY)
    first, second = (transformers.AutoModelForCausalLM.from_config(config) for _ in range(2))
    original = modeling_llama.apply_rotary_pos_emb
    report = pe_ext.patch(first, dry_run=True)
    assert report.names == ["transformers.models.llama.modeling_llama.apply_rotary_pos_emb"]
    assert modeling_llama.apply_rotary_pos_emb is original and not report.applied
    a, b = pe_ext.patch(first), pe_ext.patch(second)
    a.undo()
    assert modeling_llama.apply_rotary_pos_emb is not original  # the second patch still holds the shared swap
    b.undo()
    b.undo()  # idempotent
    assert modeling_llama.apply_rotary_pos_emb is original
    assert pe_ext.patch(torch.nn.Linear(2, 2)).names == []
