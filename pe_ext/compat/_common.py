"""What the compat layers share: sin/cos of angles a project forms itself, and x * scale with dropout in one pass."""

from __future__ import annotations

import torch
from torch import Tensor

from ..sinusoidal import ops


def sin_cos_of_angles(angles: Tensor) -> Tensor:
    """[sin(a), cos(a)] for every float32 angle a, shaped angles.shape + (2,), by pe_ext's kernel (the angle is the
    float32 product a * 1, exactly a). For the projects whose float32 angle no single product position * frequency
    reproduces: DETR divides the position by the period, diffusers scales the product again."""
    unit = torch.ones(1, dtype=torch.float32, device=angles.device)
    pairs = ops.sinusoidal_embedding(angles.reshape(-1), 2, frequencies=unit)
    return pairs.reshape(*angles.shape, 2)


def scaled_dropout(x: Tensor, scale: float, p: float, training: bool) -> Tensor:
    """dropout(x * scale) as nn.Dropout would apply it; in training, one pass of pe_ext's kernel with pe weighted
    by 0 (Philox mask; see pe_ext.add_sinusoidal_pe)."""
    if training and p > 0:
        return ops.add_sinusoidal_pe(x, scale=scale, alpha=0.0, dropout=p)
    return x * scale if scale != 1.0 else x


def positions_like(count: int, device, start: int = 0, step: int = 1) -> Tensor:
    """start, start + step, ... (count of them) as int64 positions on device."""
    return torch.arange(start, start + step * count, step, device=device)[:count]
