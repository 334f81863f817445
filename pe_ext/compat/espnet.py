"""ESPnet's positional encodings (espnet/nets/pytorch_backend/transformer/embedding.py), same constructors, forward
signatures, state_dicts and values. Each keeps a float32 table built by pe_ext's kernel, never saved, grown on
demand, and fuses x * sqrt(d_model) (or alpha * pe), the add and dropout into one pass."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..sinusoidal import modules, ops
from ._common import scaled_dropout


class PositionalEncoding(modules.PositionalEncoding):
    """ESPnet's PositionalEncoding(d_model, dropout_rate, max_len=5000, reverse=False): forward(x) =
    dropout(x * sqrt(d_model) + pe[:, :seq_len]) for x of shape (batch, seq_len, d_model). The table is not in
    state_dict, and a `pe` saved by ESPnet before v0.5.2 is dropped on load, as ESPnet does. reverse=True holds the
    table reversed, as ESPnet does: rows at positions L - 1, L - 2, ..., 0, where L is max_len or the longest sequence
    seen so far (the table is rebuilt with exactly that many rows). Dropout is fused (a Philox mask, not nn.Dropout's
    generator)."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000, reverse: bool = False) -> None:
        super().__init__(d_model, max_len, dropout_rate, persistent=False, grow=True, scale=math.sqrt(d_model))
        self.xscale, self.reverse = self.scale, reverse
        if reverse:
            self.pe = self.pe.flip(1)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        self._follow(x)
        return super().forward(x, offset)

    def _follow(self, x: Tensor) -> None:
        """Moves the table to x's device, as ESPnet's extend_pe does (its dtype stays float32)."""
        if self.pe.device != x.device:
            self.pe = self.pe.to(x.device)

    def _grown_table(self, needed: int) -> Tensor:
        if not self.reverse:
            return super()._grown_table(needed)
        self.pe = self._build_rows(0, needed, self.pe.device, self.pe.dtype).flip(1)  # positions needed - 1 ... 0
        self.max_len = needed  # after pe, as the base class orders them for concurrent readers
        return self.pe

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        state_dict.pop(prefix + "pe", None)  # saved until ESPnet v0.5.2, dropped on load since
        super()._load_from_state_dict(state_dict, prefix, *args)


class ScaledPositionalEncoding(PositionalEncoding):
    """ESPnet's ScaledPositionalEncoding(d_model, dropout_rate, max_len=5000): forward(x) = dropout(x + alpha * pe),
    alpha a learnable scalar (initially 1; state_dict {alpha}). x is not scaled (ESPnet keeps xscale unused)."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__(d_model, dropout_rate, max_len)
        self.scale = 1.0
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(1.0)


class LegacyRelPositionalEncoding(PositionalEncoding):
    """ESPnet's LegacyRelPositionalEncoding(d_model, dropout_rate, max_len=5000): forward(x) returns
    (dropout(x * sqrt(d_model)), dropout(pos_emb)), pos_emb the first seq_len rows of the reversed table (positions
    L - 1, ..., L - seq_len; L: max_len or the longest sequence seen), in x's dtype."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__(d_model, dropout_rate, max_len, reverse=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._follow(x)
        seq_len = x.shape[1]
        if seq_len > self.max_len:
            self._grown_table(seq_len)
        pos_emb = self.pe[:, :seq_len].to(x.dtype)
        p = self.dropout.p
        return scaled_dropout(x, self.xscale, p, self.training), scaled_dropout(pos_emb, 1.0, p, self.training)


class RelPositionalEncoding(nn.Module):
    """ESPnet's RelPositionalEncoding(d_model, dropout_rate, max_len=5000): forward(x) returns
    (dropout(x * sqrt(d_model)), dropout(pos_emb)), pos_emb of shape (1, 2 * seq_len - 1, d_model) at the relative
    positions seq_len - 1, ..., 0, ..., -(seq_len - 1) (Transformer-XL's), sliced from a table of positions L - 1 ...
    -(L - 1) (L: max_len or the longest sequence seen), in x's dtype. The table stays float32 (ESPnet converts it to
    the last input's dtype, so that a float32 call after a float16 one reads float16-rounded values)."""

    pe: Tensor

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__()
        self.d_model, self.xscale = d_model, math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.register_buffer("pe", self._table(max_len, None), persistent=False)

    def _table(self, span: int, device) -> Tensor:
        """Rows at positions span - 1, ..., -(span - 1), shaped (1, 2 * span - 1, d_model)."""
        positions = torch.arange(span - 1, -span, -1, device=device)
        return ops.sinusoidal_embedding(positions, self.d_model).unsqueeze(0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        seq_len = x.shape[1]
        if self.pe.shape[1] < 2 * seq_len - 1:
            self.pe = self._table(seq_len, x.device)
        elif self.pe.device != x.device:
            self.pe = self.pe.to(x.device)
        center = self.pe.shape[1] // 2
        pos_emb = self.pe[:, center - seq_len + 1: center + seq_len].to(x.dtype)
        p = self.dropout.p
        return scaled_dropout(x, self.xscale, p, self.training), scaled_dropout(pos_emb, 1.0, p, self.training)


class StreamPositionalEncoding(PositionalEncoding):
    """ESPnet's StreamPositionalEncoding(d_model, dropout_rate, max_len=5000): forward(x, start_idx=0) =
    dropout(x * sqrt(d_model) + pe[:, start_idx:start_idx + seq_len])."""

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__(d_model, dropout_rate, max_len)

    def forward(self, x: Tensor, start_idx: int = 0) -> Tensor:
        return super().forward(x, start_idx)
