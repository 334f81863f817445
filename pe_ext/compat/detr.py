"""DETR's sine position embedding for images (models/position_encoding.py), same constructor and values, with its
NestedTensor (util/misc.py) or (x, mask) as input."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._onnx import capturing_for_export
from .._scripting import Scriptable
from ._common import sin_cos_of_angles


class NestedTensor(NamedTuple):
    """DETR's NestedTensor: a padded batch of images (tensors, (batch, channels, height, width)) and its mask
    (batch, height, width), True on padding."""

    tensors: Tensor
    mask: Tensor | None

    def to(self, device) -> NestedTensor:
        return NestedTensor(self.tensors.to(device), None if self.mask is None else self.mask.to(device))

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        return self.tensors, self.mask


class PositionEmbeddingSine(Scriptable, nn.Module):
    """DETR's PositionEmbeddingSine(num_pos_feats=64, temperature=10000, normalize=False, scale=None).

    forward(tensor_list, mask=None), tensor_list a NestedTensor (anything with .tensors and .mask, as DETR's) or a
    tensor (batch, channels, height, width) with its padding mask (batch, height, width), returns the channels-first
    (batch, 2 * num_pos_feats, height, width) embedding: num_pos_feats channels for the row position, then as many
    for the column, each interleaving sin and cos, positions counted over the unpadded pixels (1, 2, ...; with
    normalize, divided by the last count + 1e-6 and times scale, 2 pi by default). DETR's float32 angles
    (position / temperature ** (2 * (i // 2) / num_pos_feats), a division, formed as DETR forms them), their sines
    and cosines by pe_ext's kernel.

    Differs: a mask of None means no padding (DETR asserts that a mask is given).
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False,
                 scale: float | None = None) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"pe_ext: num_pos_feats must be a positive even number, got {num_pos_feats}")
        if scale is not None and normalize is False:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list, mask: Tensor | None = None) -> Tensor:
        x = tensor_list
        if hasattr(x, "tensors"):
            x, mask = x.tensors, x.mask
        if mask is None:
            mask = torch.zeros(x.shape[0], x.shape[-2], x.shape[-1], dtype=torch.bool, device=x.device)
        counted = (~mask).float()
        rows, columns = counted.cumsum(1), counted.cumsum(2)
        if self.normalize:
            eps = 1e-6
            rows = rows / (rows[:, -1:, :] + eps) * self.scale
            columns = columns / (columns[:, :, -1:] + eps) * self.scale
        # One period per sin/cos pair (DETR's dim_t repeats each one twice).
        steps = torch.arange(0, self.num_pos_feats, 2, dtype=torch.float32, device=x.device)
        periods = self.temperature ** (steps / self.num_pos_feats)
        pairs = sin_cos_of_quotients(torch.stack((rows, columns), dim=3), periods)  # (b, h, w, 2, feats / 2, 2)
        return pairs.flatten(3).permute(0, 3, 1, 2)


def sin_cos_of_quotients(values: Tensor, periods: Tensor, distinct: bool | None = None) -> Tensor:
    """[sin(v / p), cos(v / p)] for every value v and period p, shaped values.shape + (len(periods), 2), the quotients
    rounded to float32 as DETR divides. distinct (default: on the CPU) computes them for the distinct values only
    (an image has few: its row and column counts) and gathers the rows: the same values, without a kernel call per
    element; elsewhere torch.unique would make the device wait. Not while a graph is captured for export: jit.trace
    would record the number of distinct values of the example as a constant."""
    if distinct is None:
        distinct = values.device.type == "cpu" and not capturing_for_export()
    if not distinct:
        return sin_cos_of_angles(values[..., None] / periods)
    uniques, inverse = torch.unique(values, return_inverse=True)
    return sin_cos_of_angles(uniques[:, None] / periods)[inverse]
