"""MAE's fixed 2-D sin-cos table for ViTs (util/pos_embed.py): get_2d_sincos_pos_embed, computed by pe_ext's kernel
in float64, as MAE computes it in NumPy."""

from __future__ import annotations

import numpy as np
import torch

from ..sinusoidal import ops


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed: the (grid_size ** 2, embed_dim) float64 NumPy array (one more, zero, row first
    with cls_token) for the patches of a grid_size x grid_size grid in row-major order: the first half of each row
    encodes the patch's column, the second half its row (MAE's meshgrid puts w first), each half all sines then all
    cosines of position * omega_i, omega_i = 1 / 10000 ** (i / (embed_dim / 4)), in float64 (MAE's np.float)."""
    if embed_dim <= 0 or embed_dim % 4:
        raise ValueError(f"pe_ext: embed_dim must be a positive multiple of 4 (two halves of sin/cos pairs), got "
                         f"{embed_dim}")
    half = embed_dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2.0))
    line = ops.sinusoidal_table(grid_size, half, dtype=torch.float64, layout="concatenated", frequencies=omega)
    table = torch.zeros(int(cls_token) + grid_size**2, embed_dim, dtype=torch.float64)
    patches = table[int(cls_token):].view(grid_size, grid_size, embed_dim)  # (row, column, channel)
    patches[..., :half] = line[None, :, :]  # the column's encoding
    patches[..., half:] = line[:, None, :]  # the row's
    return table.numpy()
