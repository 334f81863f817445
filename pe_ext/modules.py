"""Layers. They hold configuration and buffers only; the math lives in the ops."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from . import ops

BufferMode = Literal["persistent", "non_persistent", "none"]
_BUFFER_MODES = ("persistent", "non_persistent", "none")


class PositionalEncoding(nn.Module):
    """Drop-in for the classic "Attention Is All You Need" PositionalEncoding: forward(x) = x * scale + pe[:L].

    Args:
        d_model: width of x's last dimension.
        max_len: rows of the precomputed table (the longest offset + seq_len with a table).
        dropout: probability of the nn.Dropout applied to the sum (0 keeps the classic module's behaviour).
        buffer: "persistent" (default) keeps the table `pe`, shape (1, max_len, d_model), float32, in state_dict,
            so checkpoints load both ways with the classic module; "non_persistent" keeps it out of state_dict
            (still moved by .to()); "none" keeps no table: pe is computed on the fly, with no length limit.
        batch_first: x is (batch, seq_len, d_model) if True, (seq_len, batch, d_model) if False; a 2-D x is
            (seq_len, d_model) either way.
        scale: factor on x (e.g. math.sqrt(d_model)).
        base: the frequency base, 10000 in the paper.
        device: where the table is built.
    """

    pe: Tensor | None

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, *, buffer: BufferMode = "persistent",
                 batch_first: bool = True, scale: float = 1.0, base: float = ops.DEFAULT_BASE,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        ops.check_table_args(max_len, d_model, base)  # even with buffer="none", to fail here rather than in forward
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"pe_ext: dropout must be in [0, 1), got {dropout}")
        if buffer not in _BUFFER_MODES:
            raise ValueError(f"pe_ext: buffer must be one of {_BUFFER_MODES}, got {buffer!r}")
        self.d_model, self.max_len, self.buffer_mode = d_model, max_len, buffer
        self.batch_first, self.scale, self.base = batch_first, scale, base
        self.dropout = nn.Dropout(dropout)
        table = None if buffer == "none" else self._build_table(device, torch.float32)
        self.register_buffer("pe", table, persistent=buffer == "persistent")

    def _build_table(self, device, dtype: torch.dtype) -> Tensor:
        return ops.sinusoidal_table(self.max_len, self.d_model, base=self.base, dtype=dtype, device=device).unsqueeze(0)

    @torch.no_grad()
    def reset_table(self) -> None:
        """Recompute the table in place, on its current device and dtype: for a module built on the meta device and
        materialized with to_empty(), whose non-persistent table no checkpoint restores."""
        if self.pe is not None:
            self.pe.copy_(self._build_table(self.pe.device, self.pe.dtype))

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x plus the encoding of positions offset, offset + 1, ...; offset serves incremental decoding."""
        if x.dim() in (2, 3):  # other ranks: the op names the problem
            if x.shape[-1] != self.d_model:
                raise ValueError(f"pe_ext: x's last dimension ({x.shape[-1]}) must equal d_model ({self.d_model})")
            seq_len = x.shape[1 if x.dim() == 3 and self.batch_first else 0]
            if self.pe is not None and offset + seq_len > self.max_len:
                raise ValueError(
                    f"pe_ext: sequence of length {seq_len} at offset {offset} needs {offset + seq_len} positions, "
                    f"more than max_len={self.max_len}; build the module with a larger max_len or buffer='none'"
                )
        out = ops.add_sinusoidal_pe(x, self.pe, offset=offset, scale=self.scale, base=self.base,
                                    batch_first=self.batch_first)
        return self.dropout(out)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, max_len={self.max_len}, buffer={self.buffer_mode!r}, "
                f"batch_first={self.batch_first}, scale={self.scale}, base={self.base}")
