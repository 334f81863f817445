"""diffusers' timestep embedding (src/diffusers/models/embeddings.py): get_timestep_embedding and Timesteps, with
diffusers' float32 frequencies and fractional timesteps, by pe_ext's kernel."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..sinusoidal import ops
from ._common import sin_cos_of_angles


def timestep_frequencies(embedding_dim: int, downscale_freq_shift: float = 1, max_period: int = 10000,
                         device: torch.device | str | None = None) -> Tensor:
    """diffusers' embedding_dim // 2 frequencies exp(-log(max_period) * i / (half_dim - shift)), evaluated in float32
    in diffusers' order, on `device` (as diffusers computes them where the timesteps are)."""
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half_dim, dtype=torch.float32, device=device)
    return torch.exp(exponent / (half_dim - downscale_freq_shift))


def _is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


def get_timestep_embedding(timesteps: Tensor, embedding_dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1, scale: float = 1, max_period: int = 10000) -> Tensor:
    """diffusers' get_timestep_embedding: the (N, embedding_dim) float32 embedding of N timesteps (integer or
    fractional), sines then cosines (cosines first with flip_sin_to_cos), an odd width padded with a zero column.

    The angle is diffusers' float32 product timestep * frequency, then times scale: a power-of-two scale (1, the
    default, included) rounds nothing more and is folded into the frequencies; any other scale is applied to the
    float32 angles before pe_ext's kernel takes their sine and cosine, so that the angle is rounded twice, as in
    diffusers."""
    if timesteps.dim() != 1:
        raise ValueError(f"pe_ext: timesteps must be a 1-D tensor (one per batch element), got shape "
                         f"{list(timesteps.shape)}")
    frequencies = timestep_frequencies(embedding_dim, downscale_freq_shift, max_period, timesteps.device)
    layout = "concatenated_cos_first" if flip_sin_to_cos else "concatenated"
    if _is_power_of_two(scale):
        return ops.sinusoidal_embedding(timesteps, embedding_dim, layout=layout, frequencies=frequencies * scale)
    pairs = sin_cos_of_angles(timesteps[:, None].float() * frequencies[None, :] * scale)  # (N, half_dim, 2)
    halves = pairs.flip(-1) if flip_sin_to_cos else pairs
    emb = halves.transpose(1, 2).reshape(len(timesteps), -1)
    return nn.functional.pad(emb, (0, embedding_dim % 2))


class Timesteps(nn.Module):
    """diffusers' Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift, scale=1): forward(timesteps) =
    get_timestep_embedding(timesteps, num_channels, ...). No parameters or buffers, as diffusers'."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: Tensor) -> Tensor:
        return get_timestep_embedding(timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                      downscale_freq_shift=self.downscale_freq_shift, scale=self.scale)
