"""x-transformers' ScaledSinusoidalEmbedding (x_transformers/x_transformers.py), same constructor, forward
signature, state_dict ({scale}) and values, by pe_ext's kernel."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sinusoidal import modules, ops


class ScaledSinusoidalEmbedding(modules._GivenFrequencies):
    """x-transformers' ScaledSinusoidalEmbedding(dim, theta=10000): forward(x, pos=None, seq_start_pos=None,
    offset=0) returns the (seq_len, dim) embedding of positions offset ... offset + seq_len - 1 (seq_len = x.shape[1];
    or of `pos`; minus seq_start_pos if given), sines then cosines, times the learnable `scale` (initially
    dim ** -0.5). The frequencies theta ** -(i / (dim / 2)) are x-transformers' own float32 ones (the non-persistent
    buffer inv_freq).

    Differs: inv_freq stays float32 under .half() (x-transformers rounds it, and with it every angle, to float16);
    a (batch,) seq_start_pos gives (batch, seq_len, dim) (x-transformers' einsum takes 1-D positions only)."""

    def __init__(self, dim: int, theta: float = 10000) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"pe_ext: dim must be a positive even number, got {dim}")
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)
        half_dim = dim // 2
        inv_freq = theta ** -(torch.arange(half_dim).float() / half_dim)
        self._register_frequencies({"frequencies": inv_freq}, None)
        self.dim = dim

    def forward(self, x: Tensor, pos: Tensor | None = None, seq_start_pos: Tensor | None = None,
                offset: int = 0) -> Tensor:
        if pos is None:
            pos = torch.arange(x.shape[1], device=x.device) + offset
        if seq_start_pos is not None:
            pos = pos - seq_start_pos[..., None]
        emb = ops.sinusoidal_embedding(pos, self.dim, layout="concatenated", dtype=self.scale.dtype,
                                       frequencies=self.inv_freq)
        return emb * self.scale
