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


def num_frequencies(d_model: int, layout: str) -> int:
    return (d_model + 1) // 2 if layout == "interleaved" else d_model // 2


def frequencies(d_model: int, encoding: dict, double_angle: bool) -> Tensor:
    """The frequencies the angles use, as float64 values, as csrc/sinusoidal/frequencies.h makes them: a caller's
    inv_freq as given, or the formula evaluated by torch on the CPU, in float32 for a float32 angle with
    frequency_rounding="float32" (what the classic module computes), else in float64 (rounded once to float32 for a
    float32 angle). double_angle: float64 data or precise_angle."""
    if encoding["inv_freq"] is not None:
        given = encoding["inv_freq"]
        return given.double() if double_angle else given.float().double()
    count = num_frequencies(d_model, encoding["layout"])
    if count == 0:
        return torch.zeros(0, dtype=torch.float64)
    dtype = torch.float32 if not double_angle and encoding["frequency_rounding"] == "float32" else torch.float64
    if encoding["frequencies"] == "paper":  # the classic module: div_term
        values = torch.exp(torch.arange(0, d_model, 2).to(dtype) * -(math.log(encoding["base"]) / d_model))[:count]
    else:  # fairseq's timescales (tensor2tensor's max(., 1) where d_model / 2 is 1)
        min_timescale, max_timescale = encoding["min_timescale"], encoding["max_timescale"]
        increment = math.log(max_timescale / min_timescale) / max(d_model // 2 - 1, 1)
        values = torch.exp(torch.arange(count).to(dtype) * -increment) / min_timescale
    return values.double() if double_angle else values.float().double()


def pe_rows(positions: Tensor, d_model: int, dtype: torch.dtype, **encoding) -> Tensor:
    """pe(p, :) for each position p (int64, or float64 for fractional positions), computed in `dtype` (see
    csrc/sinusoidal/math.h for the conventions)."""
    precise_angle = encoding["precise_angle"]
    freqs = frequencies(d_model, encoding, precise_angle or dtype == torch.float64).to(positions.device)
    if precise_angle and dtype != torch.float64:
        angle = positions.double()[:, None] * freqs[None, :]
        turns = torch.round(angle / (2 * math.pi))  # round half to even, as rint
        angle = ((angle - turns * 6.283185307179586) - turns * 2.4492935982947064e-16).to(dtype)
    else:
        angle = positions.to(dtype)[:, None] * freqs.to(dtype)[None, :]
    sin, cos = torch.sin(angle), torch.cos(angle)
    rows = torch.zeros(positions.numel(), d_model, dtype=dtype, device=positions.device)
    layout, count = encoding["layout"], freqs.numel()
    if layout == "interleaved":
        rows[:, 0::2] = sin
        rows[:, 1::2] = cos[:, : d_model // 2]
    else:  # an odd d_model's last column stays 0
        first, second = (sin, cos) if layout == "concatenated" else (cos, sin)
        rows[:, :count] = first
        rows[:, count : 2 * count] = second
    return rows


def add_pe_values(x: Tensor, table: Tensor | None, offset: int, scale: float, options: dict, ids: Tensor | None,
                  dim: int) -> Tensor:
    """x * scale + alpha * pe(position), then dropout, for checked arguments (see checks.check_add_pe): dim is x's
    position dimension, ids the positions (offset included: int64, or float64 when fractional) or None for
    offset + l."""
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
