"""The sinusoidal encoding in plain PyTorch: the readable specification of what every kernel computes, rounded as
the kernels round (csrc/sinusoidal/math.h): float32 math for float32/float16/bfloat16 data, float64 for float64.
fallback.py checks arguments and calls these to serve the ops where the compiled extension is missing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schema import ENCODING


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in for data of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def frequency_params(d_model: int, base: float, layout: str, frequencies: str, min_timescale: float,
                      max_timescale: float) -> tuple[int, float, float]:
    """(num_freqs, freq_step, freq_scale) with freq(i) = freq_scale * exp(i * freq_step), as csrc/sinusoidal/math.h."""
    if layout not in ("interleaved", "concatenated"):
        raise ValueError(f"pe_ext: layout must be 'interleaved' or 'concatenated', got '{layout}'")
    num_freqs = (d_model + 1) // 2 if layout == "interleaved" else d_model // 2
    if frequencies == "paper":
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"pe_ext: base must be a positive finite number, got {base}")
        return num_freqs, (2.0 * -(math.log(base) / d_model) if d_model > 0 else 0.0), 1.0
    if frequencies != "timescales":
        raise ValueError(f"pe_ext: frequencies must be 'paper' or 'timescales', got '{frequencies}'")
    if not (math.isfinite(min_timescale) and math.isfinite(max_timescale) and 0 < min_timescale <= max_timescale):
        raise ValueError("pe_ext: timescales need finite 0 < min_timescale <= max_timescale, got "
                         f"min_timescale={min_timescale}, max_timescale={max_timescale}")
    steps = max(d_model // 2 - 1, 1)  # tensor2tensor's max(., 1): no division by zero for d_model < 4
    return num_freqs, -math.log(max_timescale / min_timescale) / steps, 1.0 / min_timescale


def pe_rows(positions: Tensor, d_model: int, dtype: torch.dtype, *, base: float = 10000.0,
            layout: str = "interleaved", frequencies: str = "paper", min_timescale: float = 1.0,
            max_timescale: float = 10000.0, precise_angle: bool = False) -> Tensor:
    """pe(p, :) for each integer position p, computed in `dtype` (see csrc/sinusoidal/math.h for the conventions)."""
    num_freqs, step, scale = frequency_params(d_model, base, layout, frequencies, min_timescale, max_timescale)
    freqs = scale * torch.exp(torch.arange(num_freqs, dtype=torch.float64, device=positions.device) * step)
    if precise_angle and dtype != torch.float64:
        angle = positions.double()[:, None] * freqs[None, :]
        turns = torch.round(angle / (2 * math.pi))  # round half to even, as rint
        angle = ((angle - turns * 6.283185307179586) - turns * 2.4492935982947064e-16).to(dtype)
    else:
        angle = positions.to(dtype)[:, None] * freqs.to(dtype)[None, :]
    sin, cos = torch.sin(angle), torch.cos(angle)
    rows = torch.zeros(positions.numel(), d_model, dtype=dtype, device=positions.device)
    if layout == "interleaved":
        rows[:, 0::2] = sin
        rows[:, 1::2] = cos[:, : d_model // 2]
    else:  # an odd d_model's last column stays 0
        rows[:, :num_freqs] = sin
        rows[:, num_freqs : 2 * num_freqs] = cos
    return rows


def add_pe_values(x: Tensor, table: Tensor | None, offset: int, scale: float, options: dict, ids: Tensor | None,
                  dim: int) -> Tensor:
    """x * scale + alpha * pe(position), then dropout, for checked arguments (see checks.check_add_pe): dim is x's
    position dimension, ids the positions (offset included) or None for offset + l."""
    seq_len, d_model = x.shape[dim], x.shape[-1]
    acc = acc_dtype(x.dtype)
    if ids is None:  # (seq_len,) positions along seq_dim, the same for the whole batch
        ids = torch.arange(offset, offset + seq_len, device=x.device)
        shape = [seq_len if d == dim else 1 for d in range(x.dim() - 1)]
    else:
        shape = list(ids.shape) if ids.dim() == x.dim() - 1 else [seq_len if d == dim else 1 for d in range(x.dim() - 1)]
    flat = ids.reshape(-1)
    if table is not None:
        pe = (table[0] if table.dim() == 3 else table).to(acc)[flat]
    else:
        pe = pe_rows(flat, d_model, acc, **{k: options[k] for k in ENCODING})
    if options["padding_idx"] >= 0:
        pe = torch.where((flat == options["padding_idx"])[:, None], torch.zeros_like(pe), pe)
    if options["alpha"] is not None:
        pe = pe * options["alpha"].reshape(()).to(acc)
    out = x.to(acc) * scale + pe.reshape(*shape, d_model)
    dropout = options["dropout"]
    if dropout > 0:
        # Logical index (b * seq_len + l) * d_model + col of every element, laid out like x.
        batch_first_shape = (1 if x.dim() == 2 else x.shape[1 - dim], seq_len, d_model)
        index = torch.arange(math.prod(batch_first_shape), device=x.device).reshape(batch_first_shape)
        index = index[0] if x.dim() == 2 else (index if dim == 1 else index.transpose(0, 1))
        keep = dropout_keeps(index, dropout, options["seed"])
        out = torch.where(keep, out * (1.0 / (1.0 - dropout)), torch.zeros((), dtype=acc, device=x.device))
    return out.to(x.dtype)


_MASK32 = 0xFFFFFFFF


def philox4x32_10(counter: Tensor, seed: Tensor) -> list[Tensor]:
    """Philox4x32-10 of (counter, 0) under key seed (an int64 tensor of one value, its bits read as uint64), in int64
    tensors holding uint32 values (csrc/common/philox.h). Tensor ops only, so that tracing keeps the seed an input."""
    c = [counter & _MASK32, (counter >> 32) & _MASK32, torch.zeros_like(counter), torch.zeros_like(counter)]
    seed = seed.reshape(())
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57  # wraps in int64, whose low 64 bits stay exact
        hi0, lo0 = (p0 >> 32) & _MASK32, p0 & _MASK32
        hi1, lo1 = (p1 >> 32) & _MASK32, p1 & _MASK32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    return c


def dropout_keeps(index: Tensor, p: float, seed: Tensor) -> Tensor:
    """Whether each element (by logical index) survives dropout with probability p under `seed`."""
    words = torch.stack(philox4x32_10(index // 4, seed))
    bits = words.gather(0, (index % 4).unsqueeze(0)).squeeze(0)
    return (bits >> 8).double() * (1.0 / 16777216.0) >= p
