"""What the compat layers share: sin/cos of angles a project forms itself, and x * scale with dropout in one pass."""

from __future__ import annotations

import torch
from torch import Tensor

from ..sinusoidal import ops

# fairseq's frequencies: exp(-i * log(10000) / (d / 2 - 1)) in float32, all sines then all cosines (pe_ext's
# "timescales" recipe, bit for bit); an odd width ends with a zero column. fairseq's copies in Hugging Face use them.
FAIRSEQ_ENCODING = {"frequencies": "timescales", "layout": "concatenated"}


def sin_cos_of_angles(angles: Tensor) -> Tensor:
    """[sin(a), cos(a)] for every float32 angle a, shaped angles.shape + (2,), by pe_ext's kernel (the angle is the
    float32 product a * 1, exactly a). For the projects whose float32 angle no single product position * frequency
    reproduces: DETR divides the position by the period, diffusers scales the product again."""
    unit = torch.ones(1, dtype=torch.float32, device=angles.device)
    pairs = ops.sinusoidal_embedding(angles.reshape(-1), 2, frequencies=unit)
    return pairs.reshape(*angles.shape, 2)


def scaled_dropout(x: Tensor, scale: float, p: float, training: bool) -> Tensor:
    """dropout(x * scale) as nn.Dropout would apply it; in training, one pass of pe_ext's kernel with pe weighted
    by 0 (Philox mask; see pe_ext.add_sinusoidal_pe)."""
    if training and p > 0:
        return ops.add_sinusoidal_pe(x, scale=scale, alpha=0.0, dropout=p)
    return x * scale if scale != 1.0 else x


def table_rows(table: Tensor, position_ids: Tensor, end) -> Tensor | None:
    """table's rows at position_ids if `end` (one past the largest id, an int known without reading them) is within
    it, else None."""
    if not isinstance(end, int) or end > table.shape[0]:
        return None
    return table.index_select(0, position_ids.reshape(-1)).reshape(*position_ids.shape, table.shape[-1])
