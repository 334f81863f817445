"""The pure-PyTorch implementation: the readable specification of every op, and the fallback that runs when the
compiled extension is missing (or lacks CUDA). It checks its arguments as the C++ ops do (csrc/ops.cpp) and rounds
as the kernels do (csrc/pe_math.h): float32 math for float32/float16/bfloat16 data, float64 for float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT64_MAX = 2**63 - 1


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in for data of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def frequencies(d_model: int, base: float, dtype: torch.dtype, device=None) -> Tensor:
    """freq(i) = exp(2i * -(log(base) / d_model)) for the ceil(d_model / 2) pairs, computed in float64 and rounded
    once to `dtype` (as csrc/pe_math.h does)."""
    exponent = -(math.log(base) / d_model) if d_model > 0 else 0.0  # no pairs when d_model == 0
    return torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64, device=device) * exponent).to(dtype)


def pe_rows(positions: Tensor, d_model: int, base: float, dtype: torch.dtype) -> Tensor:
    """pe(p, :) for each integer position p: sin on even columns, cos on odd ones, computed in `dtype`."""
    freqs = frequencies(d_model, base, dtype, positions.device)
    angle = positions.to(dtype)[:, None] * freqs[None, :]
    rows = torch.empty(positions.numel(), d_model, dtype=dtype, device=positions.device)
    rows[:, 0::2] = torch.sin(angle)
    rows[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return rows


def _check_base(base: float) -> None:
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"pe_ext: base must be a positive finite number, got {base}")


def _check_positions(offset: int, seq_len: int) -> None:
    if offset < 0:
        raise ValueError(f"pe_ext: offset must be >= 0, got {offset}")
    if offset > INT64_MAX - seq_len:
        raise ValueError(f"pe_ext: offset ({offset}) + seq_len ({seq_len}) overflows int64")


def _check_dtype(t: Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_no_internal_overlap(t: Tensor, name: str) -> None:
    # The same rule as at::has_internal_overlap: a zero stride on a dimension of size > 1 repeats elements.
    if any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride())):
        raise ValueError(
            f"pe_ext: {name} has elements that share memory (an expanded or overlapping view); it cannot be "
            f"written to. Pass a tensor with distinct elements, e.g. {name}.contiguous()"
        )


def _share_memory(a: Tensor, b: Tensor) -> bool:
    """Whether the byte ranges a and b span in one storage intersect (conservative, as at::assert_no_overlap)."""
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() or a.numel() == 0 or b.numel() == 0:
        return False

    def span(t):
        start = t.data_ptr()
        return start, start + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) * t.element_size() + t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _checked_seq_dim(x: Tensor, seq_dim: int) -> int:
    if x.dim() not in (2, 3):
        raise ValueError(
            "pe_ext: x must be 2-D (seq_len, d_model) or 3-D (batch, seq_len, d_model) or (seq_len, batch, d_model), "
            f"got a {x.dim()}-D tensor of shape {list(x.shape)}"
        )
    _check_dtype(x, "x")
    if not (-x.dim() <= seq_dim < x.dim() - 1 and seq_dim != -1):
        raise ValueError(
            f"pe_ext: seq_dim must index a dimension of x other than the last (d_model); got {seq_dim} "
            f"for a {x.dim()}-D x"
        )
    return seq_dim % x.dim()


def _checked_table(table: Tensor, x: Tensor, d_model: int, last_position: int) -> Tensor:
    if not (table.dim() == 2 or (table.dim() == 3 and table.shape[0] == 1)):
        raise ValueError(f"pe_ext: table must have shape (rows, d_model) or (1, rows, d_model), got {list(table.shape)}")
    rows = table[0] if table.dim() == 3 else table
    if rows.shape[1] != d_model:
        raise ValueError(
            f"pe_ext: table's last dimension ({rows.shape[1]}) must equal x's last dimension d_model ({d_model})"
        )
    if table.device != x.device:
        raise ValueError(
            f"pe_ext: table is on {table.device} but x is on {x.device}; move them to the same device "
            "(module.to(x.device))"
        )
    if table.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"pe_ext: table must be float32 or x's dtype ({x.dtype}), got {table.dtype}")
    if last_position > rows.shape[0]:
        raise ValueError(
            f"pe_ext: positions up to offset + seq_len = {last_position} need that many table rows, but the table "
            f"has {rows.shape[0]} (max_len); raise max_len or compute on the fly (no table)"
        )
    return rows


def _add_pe_values(x: Tensor, table: Tensor | None, offset: int, scale: float, base: float, seq_dim: int) -> Tensor:
    dim = _checked_seq_dim(x, seq_dim)
    if not math.isfinite(scale):
        raise ValueError(f"pe_ext: scale must be finite, got {scale}")
    _check_base(base)
    seq_len, d_model = x.shape[dim], x.shape[-1]
    _check_positions(offset, seq_len)
    acc = acc_dtype(x.dtype)
    if table is not None:
        rows = _checked_table(table, x, d_model, offset + seq_len)[offset : offset + seq_len].to(acc)
    else:
        rows = pe_rows(torch.arange(offset, offset + seq_len, device=x.device), d_model, base, acc)
    if x.dim() == 3:
        rows = rows.unsqueeze(1 - dim)  # broadcast over the batch dimension
    return (x.to(acc) * scale + rows).to(x.dtype)


def add_pe(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, base: float = 10000.0,
           seq_dim: int = 1) -> Tensor:
    """out = x * scale + pe(offset + l) along dimension seq_dim of x."""
    return _add_pe_values(x, table, offset, scale, base, seq_dim)


def add_pe_(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, base: float = 10000.0,
            seq_dim: int = 1) -> None:
    """add_pe written into x."""
    _checked_seq_dim(x, seq_dim)
    _check_no_internal_overlap(x, "x")
    x.copy_(_add_pe_values(x, table, offset, scale, base, seq_dim))


def add_pe_out(x: Tensor, table: Tensor | None, offset: int, scale: float, base: float, seq_dim: int,
               out: Tensor) -> None:
    """add_pe written into out, which has x's shape, dtype and device and does not overlap x."""
    if out.shape != x.shape:
        raise ValueError(f"pe_ext: out must have x's shape {list(x.shape)}, got {list(out.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"pe_ext: out must have x's dtype ({x.dtype}), got {out.dtype}")
    if out.device != x.device:
        raise ValueError(f"pe_ext: out is on {out.device} but x is on {x.device}")
    _check_no_internal_overlap(out, "out")
    if out.numel() > 0 and _share_memory(out, x):
        raise ValueError("pe_ext: out must not overlap x; use add_pe_ to write into x")
    out.copy_(_add_pe_values(x, table, offset, scale, base, seq_dim))


def fill_table_(out: Tensor, offset: int = 0, base: float = 10000.0) -> None:
    """out[p, :] = pe(offset + p, :)."""
    if out.dim() != 2:
        raise ValueError(f"pe_ext: out must be 2-D (num_positions, d_model), got shape {list(out.shape)}")
    _check_dtype(out, "out")
    _check_base(base)
    _check_positions(offset, out.shape[0])
    _check_no_internal_overlap(out, "out")
    positions = torch.arange(offset, offset + out.shape[0], device=out.device)
    out.copy_(pe_rows(positions, out.shape[1], base, acc_dtype(out.dtype)))
