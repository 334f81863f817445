"""tensor2tensor's timing signal (tensor2tensor/layers/common_attention.py) as torch functions, with its float32
formula: inv_timescales = min_timescale * exp(i * -log_increment), the increment rounded to float32 before the
division by max(num_timescales - 1, 1), as TensorFlow evaluates it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sinusoidal import ops


def inv_timescales(channels: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4,
                   device: torch.device | str | None = None) -> Tensor:
    """tensor2tensor's channels // 2 frequencies, evaluated in float32 as its TensorFlow graph evaluates them (with
    torch's float32 exp, which may differ from TensorFlow's in the last bit). Note the product with min_timescale,
    which the paper's formula divides by: the two agree only for min_timescale = 1, tensor2tensor's default."""
    num_timescales = channels // 2
    log_increment = torch.tensor(math.log(float(max_timescale) / float(min_timescale)), dtype=torch.float32,
                                 device=device) / max(float(num_timescales) - 1, 1.0)
    steps = torch.arange(num_timescales, device=device).float()
    return min_timescale * torch.exp(steps * -log_increment)


def get_timing_signal_1d(length: int, channels: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4,
                         start_index: int = 0, *, device: torch.device | str | None = None) -> Tensor:
    """tensor2tensor's get_timing_signal_1d: the (1, length, channels) float32 signal of positions start_index ...
    start_index + length - 1, sines then cosines, an odd channel count padded with a zero column. Built on `device`
    by pe_ext's kernel."""
    frequencies = inv_timescales(channels, min_timescale, max_timescale, device)
    table = ops.sinusoidal_table(length, channels, offset=start_index, device=device, layout="concatenated",
                                 frequencies=frequencies)
    return table.unsqueeze(0)


def add_timing_signal_1d(x: Tensor, min_timescale: float = 1.0, max_timescale: float = 1.0e4,
                         start_index: int = 0) -> Tensor:
    """tensor2tensor's add_timing_signal_1d: x + the timing signal, x of shape (batch, length, channels), in one pass
    of pe_ext's kernel. The sum is rounded once to x's dtype (tensor2tensor casts the signal to x's dtype first, so
    that bfloat16 or float16 sums round twice)."""
    frequencies = inv_timescales(x.shape[-1], min_timescale, max_timescale, x.device)
    return ops.add_sinusoidal_pe(x, offset=start_index, layout="concatenated", frequencies=frequencies)
