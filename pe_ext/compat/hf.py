"""Hugging Face transformers' sinusoidal position tables, built by pe_ext's kernels, and the on-the-fly forwards that
pe_ext.patch puts in place of its modules' table lookups.

Three tables cover the models:
  - fairseq_style_table: M2M100 (and NLLB), NLLB-MoE, Speech2Text, XGLM, TrOCR and FSMT (fairseq's get_embedding:
    float32 timescale frequencies, sines then cosines, the padding row zero);
  - marian_table: Marian and Pegasus (XLM's formula in float64 NumPy, rounded to float32; sines of the even
    columns' frequencies first, then cosines of the odd ones'), within 1 float32 ulp;
  - whisper_sinusoids: Whisper's encoder (float32 timescales, sines then cosines).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sinusoidal import ops
from ._common import FAIRSEQ_ENCODING, table_rows


def _padding_row(padding_idx: int | None) -> int:
    return -1 if padding_idx is None else padding_idx


def fairseq_style_table(num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """The get_embedding(num_embeddings, embedding_dim, padding_idx) of M2M100, NLLB-MoE, Speech2Text, XGLM, TrOCR
    and FSMT (fairseq's): float32, row padding_idx zero if given."""
    rows = torch.arange(num_embeddings, device=device)
    return ops.sinusoidal_embedding(rows, embedding_dim, padding_idx=_padding_row(padding_idx), **FAIRSEQ_ENCODING)


def _marian_frequencies(embedding_dim: int, device) -> Tensor:
    """1 / 10000 ** (2 i / d) for the ceil(d / 2) even columns, in float64 (Marian divides by 10000 ** (2 i / d) in
    float64; the product with its float64 reciprocal rounds to the same float32 value)."""
    exponents = torch.arange(0, embedding_dim, 2, dtype=torch.float64, device=device) / embedding_dim
    return 1.0 / 10000.0**exponents


def marian_rows(positions: Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Marian's and Pegasus' rows at `positions` (any shape), their float64 formula rounded to dtype: an even width
    (Marian's and Pegasus' own) by pe_ext's float32 kernel with the angle formed and reduced in float64
    (precise_angle; within 1 ulp of the float64 value rounded); an odd one by the float64 kernel (the sines of the
    ceil(d / 2) even columns' frequencies, then the cosines of the odd ones')."""
    if embedding_dim % 2 == 0:
        return ops.sinusoidal_embedding(positions, embedding_dim, dtype=dtype, layout="concatenated",
                                        precise_angle=True)
    interleaved = ops.sinusoidal_embedding(positions, embedding_dim, dtype=torch.float64,
                                           frequencies=_marian_frequencies(embedding_dim, positions.device))
    return torch.cat([interleaved[..., 0::2], interleaved[..., 1::2]], dim=-1).to(dtype)


def marian_table(num_positions: int, embedding_dim: int, device: torch.device | str | None = None) -> Tensor:
    """Marian's and Pegasus' create_weight(): the (num_positions, embedding_dim) float32 table."""
    return marian_rows(torch.arange(num_positions, device=device), embedding_dim)


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000,
                      device: torch.device | str | None = None) -> Tensor:
    """Whisper's sinusoids(length, channels, max_timescale): float32, sines then cosines of fairseq-style timescales
    (exp(-i * log(max_timescale) / (channels / 2 - 1)))."""
    if channels % 2 != 0:
        raise ValueError(f"Number of channels has to be divisible by 2 for sinusoidal positional embeddings, got "
                         f"{channels} channels.")
    return ops.sinusoidal_table(length, channels, device=device, max_timescale=float(max_timescale),
                                **FAIRSEQ_ENCODING)


# --- The forwards pe_ext.patch swaps in: subclasses of each Hugging Face class (isinstance keeps holding, and
# Hugging Face's initialization still finds them) sharing the module's state (parameters, buffers, state_dict
# unchanged). Rows the module's table holds are read from it, as the module does (a gather is faster than computing
# on the CPU), where the call's largest position is known without reading the ids; the others are computed by
# pe_ext's kernel: the table never grows, and no position is out of range. Positions come from the module's own
# methods.


class FairseqStyleRows:
    """The rows of a fairseq-style table (fairseq_style_table) at position ids, in the dtype of the module's table."""

    def _rows(self, position_ids: Tensor, end=None) -> Tensor:
        weights = self.weights
        rows = table_rows(weights, position_ids, end)
        if rows is None:
            rows = ops.sinusoidal_embedding(position_ids, self.embedding_dim, padding_idx=_padding_row(self.padding_idx),
                                            dtype=weights.dtype, **FAIRSEQ_ENCODING).to(weights.device)
        return rows.detach()


class M2M100Rows(FairseqStyleRows):
    """M2M100's and NLLB-MoE's forward(input_ids=None, inputs_embeds=None, cache_length=0)."""

    @torch.no_grad()
    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, cache_length: int = 0):
        if input_ids is not None:
            position_ids = self.create_position_ids_from_input_ids(input_ids, self.padding_idx, cache_length)
            position_ids = position_ids.to(input_ids.device)
        else:
            position_ids = self.create_position_ids_from_inputs_embeds(inputs_embeds, cache_length, self.padding_idx)
        return self._rows(position_ids, self.padding_idx + 1 + position_ids.shape[1] + cache_length)


class TokenPositionRows(FairseqStyleRows):
    """Speech2Text's and TrOCR's forward(input_ids, cache_length=0)."""

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache_length: int = 0):
        position_ids = self.create_position_ids_from_input_ids(input_ids, self.padding_idx, cache_length)
        return self._rows(position_ids.to(input_ids.device), self.padding_idx + 1 + input_ids.shape[1] + cache_length)


class XGLMRows(FairseqStyleRows):
    """XGLM's forward(position_ids=None, cache_length=0): rows position_ids + offset (computed: given ids have no
    bound known without reading them)."""

    @torch.no_grad()
    def forward(self, position_ids: Tensor | None = None, cache_length: int = 0):
        return self._rows(position_ids + self.offset)


class MarianRows:
    """Marian's and Pegasus' forward(input_ids_shape, cache_length=0, position_ids=None) (nn.Embedding subclasses)."""

    def forward(self, input_ids_shape: torch.Size, cache_length: int = 0, position_ids: Tensor | None = None):
        end = None
        if position_ids is None:
            seq_len = input_ids_shape[1]
            position_ids = torch.arange(cache_length, cache_length + seq_len, device=self.weight.device)
            end = cache_length + seq_len
        rows = table_rows(self.weight, position_ids, end)
        return marian_rows(position_ids, self.embedding_dim, self.weight.dtype) if rows is None else rows


class WhisperEncoderRows(nn.Embedding):
    """Whisper's encoder position embedding (an nn.Embedding holding sinusoids): forward(ids) computes the rows."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.sinusoidal_embedding(input, self.embedding_dim, dtype=self.weight.dtype, **FAIRSEQ_ENCODING)
