"""fairseq's SinusoidalPositionalEmbedding (fairseq/modules/sinusoidal_positional_embedding.py): same constructor,
forward signature, (empty) state_dict and values: rows read from the table (built by pe_ext's kernel) where it has
them, computed by the kernel beyond it, so that it never grows and has no length limit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..sinusoidal import ops
from ._common import FAIRSEQ_ENCODING as ENCODING
from ._common import table_rows


class SinusoidalPositionalEmbedding(nn.Module):
    """fairseq's SinusoidalPositionalEmbedding(embedding_dim, padding_idx, init_size=1024, auto_expand=True).

    forward(input, incremental_state=None, timestep=None, positions=None) takes tokens of shape (batch, seq_len) and
    returns (batch, seq_len, embedding_dim) embeddings of fairseq's make_positions (non-padding tokens numbered from
    padding_idx + 1, padding tokens padding_idx, whose row is zero); with incremental_state, the one row padding_idx +
    timestep + 1 (or padding_idx + seq_len without timestep) expanded to (batch, 1, embedding_dim). padding_idx=None
    means 0 with a nonzero row 0, as fairseq has it. The non-persistent table `weights` (init_size rows, built by
    pe_ext's kernel) follows .half() and .to() and gives the result its dtype and device, as fairseq's does.

    Differs: rows past the table are computed (the table never grows: auto_expand is kept as an attribute only; the
    incremental step computes its one row); `positions`, if given, are used (fairseq's current forward ignores them,
    its older one refused them); embedding_dim 2 or 3 takes tensor2tensor's max(d / 2 - 1, 1) where fairseq divides
    by zero.
    """

    def __init__(self, embedding_dim: int, padding_idx: int | None, init_size: int = 1024,
                 auto_expand: bool = True) -> None:
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"pe_ext: embedding_dim must be > 0, got {embedding_dim}")
        if padding_idx is not None and padding_idx < 0:
            raise ValueError(f"pe_ext: padding_idx must be >= 0 or None, got {padding_idx}")
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx if padding_idx is not None else 0
        self.zero_row = -1 if padding_idx is None else padding_idx  # get_embedding zeroes only a given padding_idx
        self.auto_expand = auto_expand
        self.max_positions = int(1e5)
        self.onnx_trace = False
        self.register_buffer("weights", self.get_embedding(init_size, embedding_dim, padding_idx), persistent=False)

    def prepare_for_onnx_export_(self) -> None:
        self.onnx_trace = True

    @staticmethod
    def get_embedding(num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> Tensor:
        """fairseq's table: (num_embeddings, embedding_dim) float32, row padding_idx zero if given."""
        rows = torch.arange(num_embeddings)
        return ops.sinusoidal_embedding(rows, embedding_dim, padding_idx=-1 if padding_idx is None else padding_idx,
                                        **ENCODING)

    def forward(self, input: Tensor, incremental_state: Any | None = None, timestep: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        bsz, seq_len = input.shape[0], input.shape[1]
        device = self.weights.device
        if incremental_state is not None:
            step = timestep.reshape(-1)[:1] + 1 if timestep is not None else torch.tensor([seq_len])
            row = self._embed((step + self.padding_idx).to(device))
            return row.reshape(1, 1, -1).expand(bsz, 1, -1)
        end = None  # given positions have no bound known without reading them
        if positions is None:
            positions, end = ops.make_positions(input, self.padding_idx), self.padding_idx + 1 + seq_len
        positions = positions.to(device)
        rows = table_rows(self.weights, positions, end)
        return self._embed(positions) if rows is None else rows

    def _embed(self, positions: Tensor) -> Tensor:
        return ops.sinusoidal_embedding(positions, self.embedding_dim, padding_idx=self.zero_row,
                                        dtype=self.weights.dtype, **ENCODING)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        for key in ("weights", "_float_tensor"):  # the keys of fairseq's older versions, dropped as fairseq does
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args)
