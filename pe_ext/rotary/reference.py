"""Rotary position embedding in plain PyTorch: the readable specification of what every kernel computes, rounded as
the kernels round (csrc/rotary/math.h): float32 math for float32/float16/bfloat16 data, float64 for float64, each
product and sum rounded once (torch runs them as separate ops). fallback.py checks arguments and calls these to serve
the ops where the compiled extension is missing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import Problem


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in for data of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_inv_freq(base: float, rotary_dim: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """Hugging Face's default frequencies, `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, with the same
    torch ops (on the CPU, as HF builds them), so bitwise equal to its inv_freq buffer; in float64 for float64."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(dtype) / rotary_dim
    return (1.0 / (base**exponents)).to(device)


def token_positions(p: Problem) -> Tensor:
    """int64 [batch, seq]: offset + (positions, or the index within the packed sequence, or the index)."""
    batch, seq = p.q.shape[0], p.q.shape[1]
    index = torch.arange(seq, device=p.q.device)
    if p.positions is not None:
        relative = p.positions
    elif p.cu_seqlens is not None:
        # the last sequence starting at or before each token (the kernels' binary search)
        starts = p.cu_seqlens[:-1]
        sequence = (torch.searchsorted(starts, index, right=True) - 1).clamp(min=0)
        relative = (index - starts[sequence]).expand(batch, seq)
    else:
        relative = index.expand(batch, seq)
    return relative + p.offset


def pair_columns(style: str, num_pairs: int, device) -> tuple[Tensor, Tensor]:
    """The columns (a, b) of every pair: neox (i, i + n), gptj (2i, 2i + 1)."""
    i = torch.arange(num_pairs, device=device)
    return (i, i + num_pairs) if style == "neox" else (2 * i, 2 * i + 1)


def coefficients(p: Problem, acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """cos and sin at the columns a and b of every pair, [batch, seq, 1, num_pairs] in acc (sin negated and swapped
    for the transposed map)."""
    n = p.rotary_dim // 2
    pos = token_positions(p)
    col_a, col_b = pair_columns(p.style, n, p.q.device)
    if p.cos is not None:
        batch_index = torch.arange(pos.shape[0], device=pos.device)[:, None]

        def gather(table, cols):  # table[b, pos[b, l], cols], positions checked to be rows of the table
            return table[batch_index, pos][..., cols].to(acc)

        cos_a, cos_b, sin_a, sin_b = gather(p.cos, col_a), gather(p.cos, col_b), gather(p.sin, col_a), \
            gather(p.sin, col_b)
    else:
        freqs = default_inv_freq(p.base, p.rotary_dim, acc, p.q.device) if p.freqs is None else p.freqs
        if p.precise_angle and acc != torch.float64:
            angle = pos.double()[..., None] * freqs.double()
            turns = torch.round(angle / (2 * math.pi))  # round half to even, as rint
            angle = ((angle - turns * 6.283185307179586) - turns * 2.4492935982947064e-16).to(acc)
        else:
            angle = pos.to(acc)[..., None] * freqs
        cos_a = cos_b = torch.cos(angle) * p.attention_scaling
        sin_a = sin_b = torch.sin(angle) * p.attention_scaling
    if p.transpose:
        sin_a, sin_b = -sin_b, -sin_a
    return tuple(t.unsqueeze(2) for t in (cos_a, sin_a, cos_b, sin_b))


def rotate(x: Tensor, p: Problem, coeffs: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """x ([batch, seq, heads, head_dim]) with its pairs rotated, in x's dtype; columns from rotary_dim on unchanged."""
    acc = acc_dtype(x.dtype)
    cos_a, sin_a, cos_b, sin_b = coeffs
    col_a, col_b = pair_columns(p.style, p.rotary_dim // 2, x.device)
    a, b = x[..., col_a].to(acc), x[..., col_b].to(acc)
    out = x.clone()
    out[..., col_a] = (a * cos_a - b * sin_a).to(x.dtype)
    out[..., col_b] = (b * cos_b + a * sin_b).to(x.dtype)
    return out


def rotary_values(p: Problem) -> tuple[Tensor, Tensor | None]:
    """The rotated q and k of a checked call, [batch, seq, heads, head_dim]."""
    coeffs = coefficients(p, acc_dtype(p.q.dtype))
    return rotate(p.q, p, coeffs), None if p.k is None else rotate(p.k, p, coeffs)
