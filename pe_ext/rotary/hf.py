"""Hugging Face compatibility: the frequencies and attention scaling of every HF rope type (computed as
transformers' ROPE_INIT_FUNCTIONS and its models' default compute them, with the same torch ops, so bitwise equal;
transformers itself is not needed), HF's apply_rotary_pos_emb as a fused drop-in, and the patcher that swaps it into
HF models (pe_ext.patch)."""

from __future__ import annotations

import inspect
import math
import sys

import torch
from torch import Tensor, nn

from ..patch import Swap, register_patcher
from .ops import apply_rotary

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_parameters(config, layer_type: str | None = None) -> dict:
    """The config's rope parameters as one dict with rope_type and rope_theta: transformers >= 5's
    config.rope_parameters (per layer type where nested), or the older rope_theta / rope_scaling /
    partial_rotary_factor attributes."""
    if hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()
    params = getattr(config, "rope_parameters", None)
    if params is None:
        scaling = dict(getattr(config, "rope_scaling", None) or {})
        params = {"rope_theta": getattr(config, "rope_theta", 10000.0), **scaling}
        if getattr(config, "partial_rotary_factor", None) is not None:
            params.setdefault("partial_rotary_factor", config.partial_rotary_factor)
    if layer_type is not None:
        params = params[layer_type]
    params = dict(params)
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rotary_dim(config, params: dict) -> int:
    return int(_head_dim(config) * params.get("partial_rotary_factor", 1.0))


def _default(config, params, device, seq_len):
    dim = _rotary_dim(config, params)
    base = params["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim)), 1.0


def _linear(config, params, device, seq_len):
    inv_freq, _ = _default(config, params, device, seq_len)
    return inv_freq / params["factor"], 1.0


def _dynamic(config, params, device, seq_len):
    base, dim, factor = params["rope_theta"], _rotary_dim(config, params), params["factor"]
    max_position = config.max_position_embeddings
    if seq_len is None:
        seq_len = max_position
    elif isinstance(seq_len, Tensor):  # HF's dynamic update passes max(position_ids) + 1 as a tensor
        seq_len = torch.maximum(seq_len, torch.tensor(max_position, dtype=seq_len.dtype, device=seq_len.device))
    else:
        seq_len = max(seq_len, max_position)
    base = base * ((factor * seq_len / max_position) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim)), 1.0


def _mscale(scale, mscale=1):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(config, params, device, seq_len):
    base, dim = params["rope_theta"], _rotary_dim(config, params)
    original = params["original_max_position_embeddings"]
    factor = params["factor"]
    if factor is None:
        factor = config.max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(_mscale(factor, mscale) / _mscale(factor, mscale_all_dim))
        else:
            attention_factor = _mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)
    return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor, attention_factor


def _longrope(config, params, device, seq_len):
    base, dim = params["rope_theta"], _rotary_dim(config, params)
    original = params["original_max_position_embeddings"]
    factor, attention_factor = params.get("factor"), params.get("attention_factor")
    if factor is None:
        factor = config.max_position_embeddings / original
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = params["long_factor"] if seq_len and seq_len > original else params["short_factor"]
    ext_factors = torch.tensor(ext, dtype=torch.float32, device=device)
    inv_freq_shape = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (ext_factors * base**inv_freq_shape), attention_factor


def _llama3(config, params, device, seq_len):
    inv_freq, _ = _default(config, params, device, seq_len)
    factor, low_factor, high_factor = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low_factor, old_context / high_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_factor) / (high_factor - low_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama), 1.0


_INIT = {"default": _default, "linear": _linear, "dynamic": _dynamic, "yarn": _yarn, "longrope": _longrope,
         "llama3": _llama3}


def rope_init(config, device: torch.device | str | None = None, seq_len: int | Tensor | None = None,
              layer_type: str | None = None) -> tuple[Tensor, float]:
    """(inv_freq, attention_scaling) of a Hugging Face config, as HF's rotary embedding computes them for its rope
    type (seq_len: dynamic and longrope's current length)."""
    params = rope_parameters(config, layer_type)
    rope_type = params["rope_type"]
    if rope_type not in _INIT:
        raise ValueError(f"pe_ext: rope_type must be one of {ROPE_TYPES}, got '{rope_type}'")
    return _INIT[rope_type](config, params, device, seq_len)


def apply_rotary_pos_emb(q: Tensor, k: Tensor | None, cos: Tensor, sin: Tensor, position_ids: Tensor | None = None,
                         unsqueeze_dim: int = 1):
    """Hugging Face's apply_rotary_pos_emb, fused: (q * cos + rotate_half(q) * sin, the same for k), reading the cos
    and sin HF computed ((batch or 1, seq, rotary_dim), broadcast over heads). unsqueeze_dim=1 is for q of shape
    (batch, heads, seq, head_dim), 2 for (batch, seq, heads, head_dim). A rotary_dim below head_dim rotates the leading
    columns and passes the rest through, as Phi-3's. position_ids indexes the rows of 2-D cos and sin caches (the
    transformers <= 4.37 convention); with 3-D cos and sin it is unused, as in later versions. Float32 results are
    bitwise HF's; float16/bfloat16 are rounded once (HF rounds three times).
    """
    if q.dim() != 4:
        raise ValueError(f"pe_ext: apply_rotary_pos_emb needs a 4-D q, got shape {list(q.shape)}")
    dim = unsqueeze_dim + cos.dim() + 1 if unsqueeze_dim < 0 else unsqueeze_dim
    layouts = {1: "bhsd", 2: "bshd"}
    if dim not in layouts:
        raise ValueError(f"pe_ext: unsqueeze_dim must be 1 (q of shape (batch, heads, seq, head_dim)) or 2 (batch, seq, "
                         f"heads, head_dim), got {unsqueeze_dim}")
    dtype = torch.result_type(q, cos)  # HF's products promote, e.g. float32 cos with bfloat16 q
    q = q.to(dtype)
    k = None if k is None else k.to(dtype)
    positions = position_ids if position_ids is not None and cos.dim() == 2 else None
    out = apply_rotary(q, k, cos=cos, sin=sin, positions=positions, layout=layouts[dim])
    return (out, None) if k is None else out


def _with_signature_of(original):
    """apply_rotary_pos_emb with the arguments `original` takes: transformers' versions differ in whether
    position_ids comes before unsqueeze_dim."""
    if "position_ids" in inspect.signature(original).parameters:
        return apply_rotary_pos_emb

    def fused(q, k, cos, sin, unsqueeze_dim=1):
        return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    fused.__doc__ = apply_rotary_pos_emb.__doc__
    return fused


# transformers' modeling modules whose apply_rotary_pos_emb is Llama's (or Phi-3's partial) formula.
HF_ROTARY_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")


@register_patcher
def hf_rotary_patcher(model: nn.Module) -> list[Swap]:
    """Swaps apply_rotary_pos_emb in the transformers modeling module of every supported model family in `model`
    (every model of that family in the process uses it while the patch holds)."""
    swaps, seen = [], set()
    for module in model.modules():
        name = type(module).__module__
        family = name.rsplit(".modeling_", 1)[-1]
        if not name.startswith("transformers.models.") or family not in HF_ROTARY_MODELS or name in seen:
            continue
        seen.add(name)
        modeling = sys.modules[name]
        original = getattr(modeling, "apply_rotary_pos_emb", None)
        if original is not None:
            swaps.append(Swap(f"{name}.apply_rotary_pos_emb", modeling, "apply_rotary_pos_emb",
                              _with_signature_of(original)))
    return swaps
