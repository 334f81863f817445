"""The layers' calls of the ops as graph capture sees them: code that TorchScript compiles and torch.fx traces (no
**keywords, no Python decisions on tensor properties). The layers' graph forwards (modules.py) call these; eager
forwards take the faster paths of ops.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import schema

_PYTHON_TYPES = {"float": float, "str": str, "bool": bool}

# The options that define the encoding's values (schema.ENCODING) but inv_freq, which layers hold as a buffer: a
# layer keeps them as one attribute, which TorchScript types as this tuple (whose field types it reads as objects).
Encoding = NamedTuple("Encoding", [(name, _PYTHON_TYPES[kind]) for name, kind, _ in schema.OPTIONS
                                   if name in schema.ENCODING and kind in _PYTHON_TYPES])


def encoding_of(options: dict) -> Encoding:
    """A layer's Encoding: its options, the defaults for the rest."""
    return Encoding(**{name: options.get(name, schema.DEFAULTS[name]) for name in Encoding._fields})


def draw_seed(x: Tensor) -> Tensor:
    """A dropout seed drawn in the graph (a fresh one per call), from torch's CPU generator as ops.py draws it. x
    only makes torch.fx record the call (see the wrap below) rather than run it once while tracing."""
    return torch.randint(0, 9223372036854775807, [1])


torch.fx.wrap("draw_seed")


def positions_from_starts(start_positions: Tensor, seq_len: int, batch_first: bool) -> Tensor:
    """start_positions[b] + l, shaped (batch, seq_len), or (seq_len, batch) when not batch_first."""
    steps = torch.arange(seq_len, device=start_positions.device, dtype=start_positions.dtype)
    positions = start_positions[:, None] + steps[None, :]
    return positions if batch_first else positions.t()


def add_pe(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, encoding: Encoding,
           inv_freq: Tensor | None, positions: Tensor | None, alpha: Tensor | None,
           dropout: float) -> Tensor:
    """torch.ops.pe_ext.add_pe with every encoding keyword spelled out (a test checks they are schema.ENCODING)."""
    seed: Tensor | None = None
    if dropout > 0:
        seed = draw_seed(x)
    return torch.ops.pe_ext.add_pe(x, table, offset, scale, seq_dim, base=encoding.base, layout=encoding.layout,
                                   frequencies=encoding.frequencies, min_timescale=encoding.min_timescale,
                                   max_timescale=encoding.max_timescale,
                                   frequency_rounding=encoding.frequency_rounding, inv_freq=inv_freq,
                                   precise_angle=encoding.precise_angle, positions=positions, alpha=alpha,
                                   dropout=dropout, seed=seed)


def embedding(positions: Tensor, d_model: int, padding_idx: int, dtype: torch.dtype, encoding: Encoding,
              inv_freq: Tensor | None) -> Tensor:
    """pe(positions) shaped positions.shape + (d_model,), zero where the position is padding_idx
    (ops.sinusoidal_embedding)."""
    out = positions.new_empty([positions.numel(), d_model], dtype=dtype)
    torch.ops.pe_ext.fill_table_(out, 0, base=encoding.base, layout=encoding.layout,
                                 frequencies=encoding.frequencies, min_timescale=encoding.min_timescale,
                                 max_timescale=encoding.max_timescale, frequency_rounding=encoding.frequency_rounding,
                                 inv_freq=inv_freq, precise_angle=encoding.precise_angle,
                                 positions=positions.reshape(-1), padding_idx=padding_idx)
    return out.unflatten(0, positions.shape)
