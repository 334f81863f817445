"""Independent references for the rotary tests: the rotation computed in float64 from HF-style formulas
(rotate_half for neox, GPT-J's rotate_every_two for gptj), written apart from pe_ext/rotary/reference.py."""

from __future__ import annotations

import torch


def hf_inv_freq(base: float, rotary_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Hugging Face Llama's default frequencies, float32, as its compute_default_rope_parameters writes them (the
    same formula in float64 for float64 data)."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(dtype=dtype) / rotary_dim))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def oracle_angles(positions: torch.Tensor, inv_freq: torch.Tensor, float32_product: bool = True) -> torch.Tensor:
    """(..., n) angles in float64: the float32 product HF forms (float32_product, for float32 frequencies), or the
    exact product of the frequencies given."""
    if float32_product and inv_freq.dtype == torch.float32:
        return (positions[..., None].float() * inv_freq.float()).double()
    return positions[..., None].double() * inv_freq.double()


def oracle_rotate(x: torch.Tensor, angles: torch.Tensor, style: str = "neox", scaling: float = 1.0) -> torch.Tensor:
    """x ([batch, seq, heads, head_dim], any dtype) rotated in float64 by angles ([batch, seq, n]); columns from 2n on
    pass through."""
    rotary_dim = 2 * angles.shape[-1]
    if style == "neox":
        emb = torch.cat((angles, angles), dim=-1)
        rotate = rotate_half
    else:
        emb = angles.repeat_interleave(2, dim=-1)
        rotate = rotate_every_two
    cos, sin = (emb.cos() * scaling)[:, :, None], (emb.sin() * scaling)[:, :, None]
    x = x.double()
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rot * cos + rotate(rot) * sin, rest), dim=-1)


def tolerance(dtype: torch.dtype, magnitude: float = 4.0) -> tuple[float, float]:
    """(atol, rtol) for one rounding to dtype of values up to `magnitude`, plus float32 sin/cos and products."""
    eps = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    math_eps = 2.0**-52 if dtype == torch.float64 else 2.0**-23
    return 4 * math_eps * magnitude + eps * magnitude, eps
