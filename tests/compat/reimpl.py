"""Independent re-implementations of each project's sinusoidal encoding, written from reading its code (the file is
named in each docstring) and evaluated in its float32 (or float64) order; nothing is imported or copied from the
projects, which are not installed. They are the oracles of tests/compat. The module classes carry the projects'
constructor and forward signatures and state; as_project_class names one as the project's class, for patch()."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def as_project_class(cls: type, module: str, name: str) -> type:
    """A subclass of cls that reports the project's module path and class name (what patch() recognizes)."""
    return type(name, (cls,), {"__module__": module, "__qualname__": name})


# --- PyTorch's nn.Transformer tutorial (beginner_source/transformer_tutorial.py): an int64 arange times the float
# scalar -log(10000) / d (promoted to float32), exp; int64 positions times that (float32); sin at even columns, cos at
# odd; a (max_len, 1, d) buffer; x + pe[:seq_len] for seq-first x, then dropout.

def paper_div_term(d_model: int) -> Tensor:
    return torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))


def paper_rows(positions: Tensor, d_model: int) -> Tensor:
    """sin/cos of float32 position * div_term, interleaved (positions: float32 or int64, any sign)."""
    angle = positions.float()[:, None] * paper_div_term(d_model)[None, :]
    rows = torch.zeros(len(positions), d_model)
    rows[:, 0::2] = torch.sin(angle)
    rows[:, 1::2] = torch.cos(angle)
    return rows


class TutorialPositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.register_buffer("pe", paper_rows(torch.arange(max_len), d_model).unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.size(0)])


class BatchFirstPositionalEncoding(nn.Module):
    """The seed's classic module: a (1, max_len, d) buffer and x + pe[:, :seq_len], no dropout."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("pe", paper_rows(torch.arange(max_len), d_model).unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.size(1)]


# --- ESPnet (espnet/nets/pytorch_backend/transformer/embedding.py). Tables are plain attributes (never saved),
# rebuilt with exactly as many rows as the longest input when too short, converted to the input's dtype and device;
# the legacy key "pe" is dropped before loading. reverse counts positions down from the table length.

ESPNET = "espnet.nets.pytorch_backend.transformer.embedding"


def _drop_legacy_pe(state_dict, prefix, *args):
    state_dict.pop(prefix + "pe", None)


class EspnetPositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout_rate, max_len=5000, reverse=False):
        super().__init__()
        self.d_model, self.reverse, self.xscale = d_model, reverse, math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.pe = None
        self.extend_pe(torch.zeros(1, max_len))
        self._register_load_state_dict_pre_hook(_drop_legacy_pe)

    def extend_pe(self, x):
        if self.pe is not None and self.pe.size(1) >= x.size(1):
            self.pe = self.pe.to(dtype=x.dtype, device=x.device)
            return
        length = x.size(1)
        positions = torch.arange(length - 1, -1, -1.0) if self.reverse else torch.arange(0, length).float()
        self.pe = paper_rows(positions, self.d_model).unsqueeze(0).to(device=x.device, dtype=x.dtype)

    def forward(self, x):
        self.extend_pe(x)
        return self.dropout(x * self.xscale + self.pe[:, : x.size(1)])


class EspnetScaledPositionalEncoding(EspnetPositionalEncoding):
    def __init__(self, d_model, dropout_rate, max_len=5000):
        super().__init__(d_model, dropout_rate, max_len)
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        self.extend_pe(x)
        return self.dropout(x + self.alpha * self.pe[:, : x.size(1)])


class EspnetLegacyRelPositionalEncoding(EspnetPositionalEncoding):
    def __init__(self, d_model, dropout_rate, max_len=5000):
        super().__init__(d_model, dropout_rate, max_len, reverse=True)

    def forward(self, x):
        self.extend_pe(x)
        return self.dropout(x * self.xscale), self.dropout(self.pe[:, : x.size(1)])


class EspnetRelPositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout_rate, max_len=5000):
        super().__init__()
        self.d_model, self.xscale = d_model, math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.pe = None
        self.extend_pe(torch.zeros(1, max_len))

    def extend_pe(self, x):
        if self.pe is not None and self.pe.size(1) >= 2 * x.size(1) - 1:
            self.pe = self.pe.to(dtype=x.dtype, device=x.device)
            return
        length = x.size(1)
        positive = paper_rows(torch.arange(length).float(), self.d_model)
        negative = paper_rows(-1 * torch.arange(length).float(), self.d_model)  # sin(-1 * p * f), as ESPnet
        table = torch.cat([positive.flip(0), negative[1:]], dim=0).unsqueeze(0)
        self.pe = table.to(device=x.device, dtype=x.dtype)

    def forward(self, x):
        self.extend_pe(x)
        center, length = self.pe.size(1) // 2, x.size(1)
        return self.dropout(x * self.xscale), self.dropout(self.pe[:, center - length + 1: center + length])


class EspnetStreamPositionalEncoding(EspnetPositionalEncoding):
    def __init__(self, d_model, dropout_rate, max_len=5000):
        super().__init__(d_model, dropout_rate, max_len)

    def forward(self, x, start_idx: int = 0):
        self.extend_pe(torch.zeros(1, x.size(1) + start_idx, dtype=x.dtype, device=x.device))
        return self.dropout(x * self.xscale + self.pe[:, start_idx: start_idx + x.size(1)])


# --- fairseq (fairseq/modules/sinusoidal_positional_embedding.py, fairseq/utils.py make_positions).

FAIRSEQ = "fairseq.modules.sinusoidal_positional_embedding"


def fairseq_table(rows: int, dim: int, padding_idx=None) -> Tensor:
    """float32: exp(i * -(log(10000) / (half - 1))) frequencies, all sines then all cosines, odd widths padded with a
    zero column, the given padding row zeroed."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1)))
    angle = torch.arange(rows).float()[:, None] * freqs[None, :]
    table = torch.cat([angle.sin(), angle.cos(), torch.zeros(rows, dim % 2)], dim=1)
    if padding_idx is not None:
        table[padding_idx] = 0
    return table


def fairseq_positions(tokens: Tensor, padding_idx: int) -> Tensor:
    keep = (tokens != padding_idx).int()
    return (keep.cumsum(1) * keep).long() + padding_idx


class FairseqSinusoidalPositionalEmbedding(nn.Module):
    def __init__(self, embedding_dim, padding_idx, init_size=1024, auto_expand=True):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.padding_idx = 0 if padding_idx is None else padding_idx
        self.given_padding = padding_idx
        self.register_buffer("weights", fairseq_table(init_size, embedding_dim, padding_idx), persistent=False)
        self.max_positions, self.auto_expand = int(1e5), auto_expand

    def forward(self, input, incremental_state=None, timestep=None, positions=None):
        bsz, seq_len = input.shape[:2]
        needed = self.padding_idx + 1 + seq_len
        weights = self.weights
        if needed > weights.size(0):
            weights = fairseq_table(needed, self.embedding_dim, self.given_padding).to(self.weights)
        if incremental_state is not None:
            step = timestep.view(-1)[0] + 1 if timestep is not None else seq_len
            return weights[self.padding_idx + step, :].expand(bsz, 1, -1)
        ids = fairseq_positions(input, self.padding_idx)
        return weights.index_select(0, ids.view(-1)).view(bsz, seq_len, -1)


# --- Hugging Face's Marian and Pegasus (create_weight): position / 10000 ** (2 (j // 2) / d) in float64 NumPy, the
# sines of the even columns, then the cosines of the odd ones, rounded to float32. (Their other tables are checked
# against transformers' own code.)

def marian_rows(positions: Tensor, dim: int) -> Tensor:
    j = np.arange(dim)
    angle = positions.numpy().astype(np.float64)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    return torch.from_numpy(np.concatenate([np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])], axis=1)).float()


# --- tensor2tensor (tensor2tensor/layers/common_attention.py), its TensorFlow float32 graph written in torch.

def t2t_signal(length, channels, min_timescale=1.0, max_timescale=1.0e4, start_index=0) -> Tensor:
    position = (torch.arange(length) + start_index).float()
    count = channels // 2
    log_increment = torch.tensor(math.log(float(max_timescale) / float(min_timescale))).float() / torch.maximum(
        torch.tensor(float(count)) - 1, torch.tensor(1.0))
    inv = torch.tensor(min_timescale).float() * torch.exp(torch.arange(count).float() * -log_increment)
    scaled = position[:, None] * inv[None, :]
    signal = torch.cat([scaled.sin(), scaled.cos(), torch.zeros(length, channels % 2)], dim=1)
    return signal.reshape(1, length, channels)


# --- diffusers (src/diffusers/models/embeddings.py get_timestep_embedding).

DIFFUSERS = "diffusers.models.embeddings"


def diffusers_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                        max_period=10000) -> Tensor:
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - downscale_freq_shift)
    angle = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    angle = scale * angle
    sin, cos = angle.sin(), angle.cos()
    parts = [cos, sin] if flip_sin_to_cos else [sin, cos]
    return torch.cat(parts + [torch.zeros(len(timesteps), embedding_dim % 2)], dim=-1)


class DiffusersTimesteps(nn.Module):
    def __init__(self, num_channels, flip_sin_to_cos, downscale_freq_shift, scale=1):
        super().__init__()
        self.num_channels, self.flip_sin_to_cos = num_channels, flip_sin_to_cos
        self.downscale_freq_shift, self.scale = downscale_freq_shift, scale

    def forward(self, timesteps):
        return diffusers_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift,
                                   self.scale)


# --- x-transformers (x_transformers/x_transformers.py ScaledSinusoidalEmbedding).

XTRANSFORMERS = "x_transformers.x_transformers"


class XTransformersScaledSinusoidalEmbedding(nn.Module):
    def __init__(self, dim, theta=10000):
        super().__init__()
        assert dim % 2 == 0
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)
        half = dim // 2
        self.register_buffer("inv_freq", theta ** -(torch.arange(half).float() / half), persistent=False)

    def forward(self, x, pos=None, seq_start_pos=None, offset=0):
        if pos is None:
            pos = torch.arange(x.shape[1], device=x.device) + offset
        if seq_start_pos is not None:
            pos = pos - seq_start_pos[..., None]
        angle = pos.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # einsum('i, j -> i j')
        return torch.cat((angle.sin(), angle.cos()), dim=-1) * self.scale


# --- DETR (models/position_encoding.py PositionEmbeddingSine). Each channel's angle is divided by its own period
# (pairs share one), sines at even channels and cosines at odd ones, rows' channels before columns'.

DETR = "models.position_encoding"


class DetrPositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list):
        mask = tensor_list.mask
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y = y / (y[:, -1:, :] + 1e-6) * self.scale
            x = x / (x[:, :, -1:] + 1e-6) * self.scale
        channel = torch.arange(self.num_pos_feats, dtype=torch.float32)
        period = self.temperature ** (2 * (channel // 2) / self.num_pos_feats)
        even = channel.long() % 2 == 0

        def encode(coordinate):
            angle = coordinate[..., None] / period
            return torch.where(even, angle.sin(), angle.cos())

        return torch.cat((encode(y), encode(x)), dim=3).permute(0, 3, 1, 2)


# --- MAE (util/pos_embed.py), in NumPy float64 (MAE's np.float, removed from NumPy since 1.24).

def mae_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    def one_d(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angle = np.outer(positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    coords = np.arange(grid_size, dtype=np.float32)
    w, h = np.meshgrid(coords, coords)  # w first, as MAE
    table = np.concatenate([one_d(embed_dim // 2, w), one_d(embed_dim // 2, h)], axis=1)
    return np.concatenate([np.zeros((1, embed_dim)), table], axis=0) if cls_token else table
