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


# Where a call writes its result, as csrc/pe_ops.h's Write: a fresh tensor (add_pe), x itself (add_pe_), or a
# caller's tensor (add_pe_out).
NEW, IN_PLACE, OUT = "new", "in_place", "out"


def check_base(base: float) -> None:
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


def _has_distinct_elements(t: Tensor) -> bool:
    """Whether t's elements provably lie at distinct addresses: with its dimensions of size > 1 sorted by stride,
    each stride steps past everything the smaller ones reach (as csrc/ops.cpp)."""
    if t.numel() == 0:
        return True
    reach = 0  # the largest element offset the smaller dimensions reach
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


def _check_distinct_elements(t: Tensor, name: str) -> None:
    if not _has_distinct_elements(t):
        raise ValueError(
            f"pe_ext: {name} has elements that share memory (an expanded or overlapping view); it cannot be "
            f"written to. Pass a tensor with distinct elements, e.g. {name}.contiguous()"
        )


def _share_memory(a: Tensor, b: Tensor) -> bool:
    """Whether the address ranges a and b span in one storage intersect (conservative, as csrc/ops.cpp)."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t):
        start = t.data_ptr()
        return start, start + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _check_no_shared_memory(written: Tensor, name: str, read: Tensor, read_name: str) -> None:
    if _share_memory(written, read):
        raise ValueError(
            f"pe_ext: {name}'s memory overlaps {read_name}'s, which the op still reads while writing {name}; pass a "
            f"separate tensor (e.g. {read_name}.clone())"
        )


def _check_untracked(t: Tensor, name: str, op: str) -> None:
    # The writing ops have no autograd formula: they refuse tensors autograd tracks while grad mode is on.
    if torch.is_grad_enabled() and t.requires_grad:
        raise RuntimeError(
            f"pe_ext: {name} requires grad, but {op} has no autograd formula; use the out-of-place "
            "add_sinusoidal_pe, or run under torch.no_grad()"
        )


def _check_table(table: Tensor, x: Tensor, d_model: int, last_position: int) -> None:
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


def check_add_pe(x: Tensor, table: Tensor | None, offset: int, scale: float, base: float, seq_dim: int,
                 out: Tensor | None, write: str, *, memory: bool = True) -> int:
    """csrc/ops.cpp's prepare_add_pe: the same checks in the same order, raising the same exception types; returns
    the position dimension. out is None for NEW, x for IN_PLACE. memory=False skips the checks that read addresses
    (fake and meta tensors have none)."""
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
    if not math.isfinite(scale):
        raise ValueError(f"pe_ext: scale must be finite, got {scale}")
    check_base(base)
    if write == OUT:
        if out.shape != x.shape:
            raise ValueError(f"pe_ext: out must have x's shape {list(x.shape)}, got {list(out.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"pe_ext: out must have x's dtype ({x.dtype}), got {out.dtype}")
        if out.device != x.device:
            raise ValueError(f"pe_ext: out is on {out.device} but x is on {x.device}")
    out_name = "x" if write == IN_PLACE else "out"
    if write != NEW:
        op = "add_pe_ (in place)" if write == IN_PLACE else "add_pe_out (out=)"
        for t, name in ((x, "x"), (table, "table"), (out, out_name)):
            if t is not None:
                _check_untracked(t, name, op)
        if memory:
            _check_distinct_elements(out, out_name)
            if write == OUT:
                _check_no_shared_memory(out, "out", x, "x")
    dim = seq_dim % x.dim()
    seq_len = x.shape[dim]
    _check_positions(offset, seq_len)
    if table is not None:
        _check_table(table, x, x.shape[-1], offset + seq_len)
        if memory and write != NEW:
            _check_no_shared_memory(out, out_name, table, "table")
    return dim


def check_fill_table(out: Tensor, offset: int, base: float, *, memory: bool = True) -> None:
    """csrc/ops.cpp's prepare_fill_table."""
    if out.dim() != 2:
        raise ValueError(f"pe_ext: out must be 2-D (num_positions, d_model), got shape {list(out.shape)}")
    _check_dtype(out, "out")
    check_base(base)
    _check_positions(offset, out.shape[0])
    _check_untracked(out, "out", "fill_table_")
    if memory:
        _check_distinct_elements(out, "out")


def _add_pe_values(x: Tensor, table: Tensor | None, offset: int, scale: float, base: float, dim: int) -> Tensor:
    """x * scale + pe for checked arguments, dim being the position dimension."""
    seq_len, d_model = x.shape[dim], x.shape[-1]
    acc = acc_dtype(x.dtype)
    if table is not None:
        rows = (table[0] if table.dim() == 3 else table)[offset : offset + seq_len].to(acc)
    else:
        rows = pe_rows(torch.arange(offset, offset + seq_len, device=x.device), d_model, base, acc)
    if x.dim() == 3:
        rows = rows.unsqueeze(1 - dim)  # broadcast over the batch dimension
    return (x.to(acc) * scale + rows).to(x.dtype)


def add_pe(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, base: float = 10000.0,
           seq_dim: int = 1) -> Tensor:
    """out = x * scale + pe(offset + l) along dimension seq_dim of x."""
    dim = check_add_pe(x, table, offset, scale, base, seq_dim, None, NEW)
    return _add_pe_values(x, table, offset, scale, base, dim)


def add_pe_(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, base: float = 10000.0,
            seq_dim: int = 1) -> None:
    """add_pe written into x."""
    dim = check_add_pe(x, table, offset, scale, base, seq_dim, x, IN_PLACE)
    x.copy_(_add_pe_values(x, table, offset, scale, base, dim))


def add_pe_out(x: Tensor, table: Tensor | None, offset: int, scale: float, base: float, seq_dim: int,
               out: Tensor) -> None:
    """add_pe written into out, which has x's shape, dtype and device and shares no memory with x or table."""
    dim = check_add_pe(x, table, offset, scale, base, seq_dim, out, OUT)
    out.copy_(_add_pe_values(x, table, offset, scale, base, dim))


def fill_table_(out: Tensor, offset: int = 0, base: float = 10000.0) -> None:
    """out[p, :] = pe(offset + p, :)."""
    check_fill_table(out, offset, base)
    positions = torch.arange(offset, offset + out.shape[0], device=out.device)
    out.copy_(pe_rows(positions, out.shape[1], base, acc_dtype(out.dtype)))
