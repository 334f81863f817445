"""Layers. They hold configuration and buffers only; the math lives in the ops."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from . import ops, schema

BufferMode = Literal["persistent", "non_persistent", "none"]
_BUFFER_MODES = ("persistent", "non_persistent", "none")


class PositionalEncoding(nn.Module):
    """Drop-in for the classic "Attention Is All You Need" PositionalEncoding: forward(x) = x * scale + pe[:L].

    Args:
        d_model: width of x's last dimension.
        max_len: rows of the precomputed table (the longest offset + seq_len with a table).
        dropout: probability of dropout applied to the sum in training mode, fused into the same pass (0 keeps the
            classic module's behaviour).
        buffer: "persistent" (default) keeps the table `pe`, shape (1, max_len, d_model), float32, in state_dict,
            so checkpoints load both ways with the classic module; "non_persistent" keeps it out of state_dict
            (still moved by .to()); "none" keeps no table: pe is computed on the fly, with no length limit.
        batch_first: x is (batch, seq_len, d_model) if True, (seq_len, batch, d_model) if False; a 2-D x is
            (seq_len, d_model) either way.
        scale: factor on x (e.g. math.sqrt(d_model)).
        grow: with a table, a sequence that needs more than max_len positions grows the table (to twice as many
            rows, or as many as needed), keeping its dtype and device, as ESPnet does; else it is an error.
        base: the frequency base, 10000 in the paper.
        device: where the table is built.
        encoding: the other encoding keywords of pe_ext.ops (layout, frequencies, min_timescale, max_timescale,
            precise_angle).
    """

    pe: Tensor | None

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, *, buffer: BufferMode = "persistent",
                 batch_first: bool = True, scale: float = 1.0, grow: bool = False, base: float = schema.DEFAULTS["base"],
                 device: torch.device | str | None = None, **encoding) -> None:
        super().__init__()
        ops.check_table_args(max_len, d_model)  # even with buffer="none", to fail here rather than in forward
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"pe_ext: dropout must be in [0, 1), got {dropout}")
        if buffer not in _BUFFER_MODES:
            raise ValueError(f"pe_ext: buffer must be one of {_BUFFER_MODES}, got {buffer!r}")
        self.d_model, self.max_len, self.buffer_mode = d_model, max_len, buffer
        self.batch_first, self.scale, self.grow = batch_first, scale, grow
        self.encoding = {"base": base, **encoding}
        ops.sinusoidal_table(0, d_model, **self.encoding)  # checks the encoding now, also with buffer="none"
        # What forward passes to the op: only non-default keywords, which each cost time to parse.
        self._op_encoding = {k: v for k, v in self.encoding.items() if schema.DEFAULTS.get(k) != v}
        self.dropout = nn.Dropout(dropout)
        table = None if buffer == "none" else self._build_table(device, torch.float32)
        self.register_buffer("pe", table, persistent=buffer == "persistent")
        self.register_parameter("alpha", None)  # a learnable factor on pe in ScaledPositionalEncoding

    def _build_table(self, device, dtype: torch.dtype) -> Tensor:
        return ops.sinusoidal_table(self.max_len, self.d_model, dtype=dtype, device=device, **self.encoding).unsqueeze(0)

    @torch.no_grad()
    def reset_table(self) -> None:
        """Recompute the table in place, on its current device and dtype: for a module built on the meta device and
        materialized with to_empty(), whose non-persistent table no checkpoint restores."""
        if self.pe is not None:
            self.pe.copy_(self._build_table(self.pe.device, self.pe.dtype))

    def forward(self, x: Tensor, offset: int = 0, *, positions: Tensor | None = None,
                start_positions: Tensor | None = None) -> Tensor:
        """x plus the encoding of positions offset, offset + 1, ... (offset serves incremental decoding), or of
        offset + positions (ids shaped like x without d_model), or of offset + start_positions[b] + l."""
        # Decoding calls are overhead-bound: the buffer and parameter are read from their dicts once (nn.Module's
        # __getattr__ costs ~0.5 us a lookup).
        pe, alpha = self._buffers["pe"], self._parameters["alpha"]
        if x.dim() in (2, 3):
            if x.shape[-1] != self.d_model:  # other ranks: the op names the problem
                raise ValueError(f"pe_ext: x's last dimension ({x.shape[-1]}) must equal d_model ({self.d_model})")
            if pe is not None and positions is None and start_positions is None:
                seq_len = x.shape[1 if x.dim() == 3 and self.batch_first else 0]
                if offset + seq_len > self.max_len:
                    if not self.grow:
                        raise ValueError(
                            f"pe_ext: sequence of length {seq_len} at offset {offset} needs {offset + seq_len} "
                            f"positions, more than max_len={self.max_len}; build the module with a larger max_len, "
                            "grow=True or buffer='none'")
                    pe = self._grow_table(offset + seq_len)
        # Dropout is fused into the add; self.dropout (an nn.Dropout, as in the tutorial module) holds p.
        return ops.add_sinusoidal_pe(x, pe, offset=offset, scale=self.scale, batch_first=self.batch_first,
                                     alpha=1.0 if alpha is None else alpha, positions=positions,
                                     start_positions=start_positions, dropout=self.dropout.p if self.training else 0.0,
                                     **self._op_encoding)

    def _grow_table(self, needed: int) -> Tensor:
        self.max_len = max(needed, 2 * self.max_len)
        self.pe = self._build_table(self.pe.device, self.pe.dtype)  # still the registered buffer, same persistence
        return self.pe

    def extra_repr(self) -> str:
        encoding = ", ".join(f"{k}={v!r}" for k, v in self.encoding.items())
        return (f"d_model={self.d_model}, max_len={self.max_len}, buffer={self.buffer_mode!r}, "
                f"batch_first={self.batch_first}, scale={self.scale}, grow={self.grow}, {encoding}")


class ScaledPositionalEncoding(PositionalEncoding):
    """ESPnet's ScaledPositionalEncoding: x * sqrt(d_model) + alpha * pe, with alpha a learnable scalar (initial
    value `alpha`), dropout after the sum; the table grows on demand as ESPnet's does. Other arguments as
    PositionalEncoding's."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, *, alpha: float = 1.0,
                 grow: bool = True, **kwargs) -> None:
        super().__init__(d_model, max_len, dropout, scale=math.sqrt(d_model), grow=grow, **kwargs)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.initial_alpha = float(alpha)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.initial_alpha)


class SinusoidalPositionalEmbedding(nn.Module):
    """fairseq's SinusoidalPositionalEmbedding: forward(tokens) returns (batch, seq_len, embedding_dim) embeddings
    of make_positions(tokens, padding_idx) (padding tokens: a zero embedding), with fairseq's timescale frequencies
    and concatenated layout. Computed by one kernel, with no table and no length limit."""

    def __init__(self, embedding_dim: int, padding_idx: int, **encoding) -> None:
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"pe_ext: embedding_dim must be > 0, got {embedding_dim}")
        self.embedding_dim, self.padding_idx = embedding_dim, padding_idx
        self.encoding = {"frequencies": "timescales", "layout": "concatenated", **encoding}
        # Follows .to(device) and .half() as fairseq's buffer of the same name does; it holds no data.
        self.register_buffer("_float_tensor", torch.empty(0), persistent=False)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        if positions is None:
            positions = ops.make_positions(tokens, self.padding_idx)
        return ops.sinusoidal_embedding(positions.to(self._float_tensor.device), self.embedding_dim,
                                        padding_idx=self.padding_idx, dtype=self._float_tensor.dtype,
                                        **self.encoding)
