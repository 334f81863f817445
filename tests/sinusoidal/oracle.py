"""References written independently of pe_ext: a float64 oracle and the classic module as every tutorial writes it."""

from __future__ import annotations

import math

import torch
from torch import nn

BASE = 10000.0


def oracle_pe(positions, d_model: int, base: float = BASE) -> torch.Tensor:
    """pe(p, j) in float64: sin(p / base^(2i/d)) for j = 2i, cos(p / base^(2i/d)) for j = 2i + 1."""
    positions = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 1)
    pair = torch.arange(d_model, dtype=torch.float64) // 2
    angle = positions / torch.pow(torch.tensor(base, dtype=torch.float64), 2 * pair / d_model)
    even = torch.arange(d_model) % 2 == 0
    return torch.where(even, torch.sin(angle), torch.cos(angle))


def oracle_encoding(positions, d_model: int, *, base: float = BASE, layout: str = "interleaved",
                    frequencies: str = "paper", min_timescale: float = 1.0, max_timescale: float = 10000.0,
                    precise_angle: bool = False) -> torch.Tensor:
    """Every convention pe_ext offers, in float64 (precise_angle changes only pe_ext's rounding, not the truth).

    paper: period of pair i is base^(2i/d). timescales (tensor2tensor, fairseq): d//2 periods spaced geometrically
    from min_timescale to max_timescale. interleaved: sin/cos alternate; concatenated: all sin, then all cos
    (concatenated_cos_first: all cos, then all sin), and an odd d ends with a zero column. Positions may be
    fractional or negative.
    """
    positions = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 1)
    if frequencies == "paper":
        count = (d_model + 1) // 2 if layout == "interleaved" else d_model // 2
        periods = torch.tensor(base, dtype=torch.float64) ** (2 * torch.arange(count, dtype=torch.float64) / d_model)
    else:
        count = (d_model + 1) // 2 if layout == "interleaved" else d_model // 2
        spacing = max(d_model // 2 - 1, 1)
        periods = min_timescale * (max_timescale / min_timescale) ** (torch.arange(count, dtype=torch.float64)
                                                                      / spacing)
    angle = positions / periods
    if layout == "interleaved":
        return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(len(positions), -1)[:, :d_model]
    halves = [torch.sin(angle), torch.cos(angle)]
    rows = torch.cat(halves if layout == "concatenated" else halves[::-1], dim=1)
    return torch.cat([rows, torch.zeros(len(positions), d_model - rows.shape[1], dtype=torch.float64)], dim=1)


def fairseq_sinusoidal_embedding(num_embeddings: int, embedding_dim: int) -> torch.Tensor:
    """fairseq's SinusoidalPositionalEmbedding.get_embedding (no padding_idx), as fairseq writes it (float32)."""
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float) * -emb)
    emb = torch.arange(num_embeddings, dtype=torch.float).unsqueeze(1) * emb.unsqueeze(0)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).view(num_embeddings, -1)
    if embedding_dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros(num_embeddings, 1)], dim=1)
    return emb


def diffusers_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool = False,
                                 downscale_freq_shift: float = 1, max_period: int = 10000):
    """diffusers' get_timestep_embedding (scale 1), as diffusers writes it (float32); returns the embedding and the
    frequencies it used."""
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half_dim, dtype=torch.float32)
    exponent = exponent / (half_dim - downscale_freq_shift)
    freqs = torch.exp(exponent)
    emb = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb, freqs


def oracle_add(x: torch.Tensor, offset: int = 0, scale: float = 1.0, base: float = BASE, seq_dim: int = 1):
    """x * scale + pe in float64, for x of shape (B, L, D) with seq_dim 1, (L, B, D) with seq_dim 0, or (L, D)."""
    seq_len, d_model = x.shape[seq_dim if x.dim() == 3 else 0], x.shape[-1]
    pe = oracle_pe(torch.arange(offset, offset + seq_len), d_model, base).to(x.device)
    if x.dim() == 3:
        pe = pe.unsqueeze(1 - seq_dim)
    return x.double() * scale + pe


def float32_ulps(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """|ours - theirs| in float32 ulps of the larger magnitude of the two."""
    larger = torch.maximum(ours.float().abs(), theirs.float().abs())
    ulp = torch.nextafter(larger, torch.tensor(math.inf)) - larger
    return (ours.double() - theirs.double()).abs() / ulp.double()


# Half an ulp of each dtype at 1.0: the rounding of the stored result.
OUTPUT_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def tolerance(dtype: torch.dtype, max_position: int, magnitude: float = 1.0):
    """(atol, rtol) for a result of `dtype` against the oracle. The classic float32 formula rounds the frequency
    (relative error up to ~1e-7 of the angle after exp) and the angle pos * freq (half an ulp), so its error grows
    with the position; float64 math (for float64 data) shrinks that by 2^29. Then the result is rounded to dtype."""
    per_position = 2e-7 if dtype != torch.float64 else 4e-16
    atol = per_position * max_position + 16 * (2.0**-24 if dtype != torch.float64 else 2.0**-53)
    out_eps = OUTPUT_EPS[dtype]
    return atol + 2 * out_eps * (1.0 + magnitude), 2 * out_eps


def classic_div_term(d_model: int, base: float = BASE) -> torch.Tensor:
    """The classic module's frequencies, as it computes them (float32)."""
    return torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(base) / d_model))


def classic_rows(positions, d_model: int) -> torch.Tensor:
    """The classic module's statements on chosen positions only (its table is too large for wide rows far out); an
    odd d_model, where the classic module fails, takes the first d_model // 2 cosines."""
    position = torch.as_tensor(positions).float().unsqueeze(1)
    div_term = classic_div_term(d_model)
    pe = torch.zeros(position.shape[0], d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
    return pe


class SeqFirstPositionalEncoding(nn.Module):
    """PyTorch's nn.Transformer tutorial module (seq-first): its buffer is (max_len, 1, d_model)."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[: x.size(0)]


class RowsPositionalEncoding(nn.Module):
    """A module that saves its table as plain (max_len, d_model) rows."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("pe", ClassicPositionalEncoding(d_model, max_len).pe[0].clone())

    def forward(self, x):
        return x + self.pe[: x.size(1)]


class ClassicPositionalEncoding(nn.Module):
    """The "Attention Is All You Need" module as the tutorials write it (batch-first buffer (1, max_len, d_model))."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return x + self.pe[:, : x.size(1)]


class EspnetPositionalEncoding(nn.Module):
    """ESPnet's PositionalEncoding and ScaledPositionalEncoding (espnet/nets/pytorch_backend/transformer/
    embedding.py) as ESPnet writes them: the table is a plain attribute (not in state_dict) computed in float32 and
    extended to each longer input; the plain layer returns dropout(x * sqrt(d_model) + pe), the scaled one (scaled=True)
    dropout(x + alpha * pe) with a learnable alpha starting at 1.0."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000, scaled: bool = False):
        super().__init__()
        self.d_model, self.scaled = d_model, scaled
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.pe = None
        self.extend_pe(torch.tensor(0.0).expand(1, max_len))
        if scaled:
            self.alpha = nn.Parameter(torch.tensor(1.0))

    def extend_pe(self, x):
        if self.pe is not None and self.pe.size(1) >= x.size(1):
            if self.pe.dtype != x.dtype or self.pe.device != x.device:
                self.pe = self.pe.to(dtype=x.dtype, device=x.device)
            return
        pe = torch.zeros(x.size(1), self.d_model)
        position = torch.arange(0, x.size(1), dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32)
                             * -(math.log(10000.0) / self.d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.pe = pe.unsqueeze(0).to(device=x.device, dtype=x.dtype)

    def forward(self, x):
        self.extend_pe(x)
        if self.scaled:
            return self.dropout(x + self.alpha * self.pe[:, : x.size(1)])
        return self.dropout(x * self.xscale + self.pe[:, : x.size(1)])
