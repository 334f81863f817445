"""Typed wrappers over torch.ops.pe_ext.*, with their fake (meta) kernels and autograd formulas."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend  # noqa: F401  (registers torch.ops.pe_ext.*)
from . import reference

DEFAULT_BASE = 10000.0


def _seq_dim(x: Tensor, batch_first: bool) -> int:
    return 1 if x.dim() == 3 and batch_first else 0


def _checked_offset(offset: int) -> int:
    # The ops take an int64; outside it torch's argument parser would refuse the call without saying why.
    if not -(2**63) <= offset <= reference.INT64_MAX:
        raise ValueError(f"pe_ext: offset must be >= 0 and fit in int64, got {offset}")
    return offset


def check_table_args(num_positions: int, d_model: int, base: float) -> None:
    """The table's sizes and base, checked where they are given (PositionalEncoding checks them even without one)."""
    if num_positions < 0:
        raise ValueError(f"pe_ext: num_positions (max_len) must be >= 0, got {num_positions}")
    if d_model <= 0:
        raise ValueError(f"pe_ext: d_model must be > 0, got {d_model}")
    reference.check_base(base)


def add_sinusoidal_pe(x: Tensor, table: Tensor | None = None, *, offset: int = 0, scale: float = 1.0,
                      base: float = DEFAULT_BASE, batch_first: bool = True, out: Tensor | None = None) -> Tensor:
    """x * scale + pe(offset + l) for every position l of x, in one pass; the result keeps x's dtype.

    x is (batch, seq_len, d_model) when batch_first, (seq_len, batch, d_model) otherwise, or (seq_len, d_model).
    pe rows are read from `table` ((rows, d_model) or the module's (1, rows, d_model); float32 or x's dtype) when
    given, else computed on the fly with no length limit. `out`, if given, is written and returned (no autograd,
    as with torch's out= arguments).
    """
    seq_dim, offset = _seq_dim(x, batch_first), _checked_offset(offset)
    if out is None:
        return torch.ops.pe_ext.add_pe.default(x, table, offset, scale, base, seq_dim)
    torch.ops.pe_ext.add_pe_out.default(x, table, offset, scale, base, seq_dim, out)
    return out


def add_sinusoidal_pe_(x: Tensor, table: Tensor | None = None, *, offset: int = 0, scale: float = 1.0,
                       base: float = DEFAULT_BASE, batch_first: bool = True) -> Tensor:
    """add_sinusoidal_pe written into x, which is returned. Refuses tensors that autograd tracks."""
    torch.ops.pe_ext.add_pe_.default(x, table, _checked_offset(offset), scale, base, _seq_dim(x, batch_first))
    return x


def sinusoidal_table(num_positions: int, d_model: int, *, base: float = DEFAULT_BASE, offset: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The (num_positions, d_model) table of pe(offset + p, :), built by a kernel on `device`."""
    check_table_args(num_positions, d_model, base)
    if dtype not in reference.SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    out = torch.empty(num_positions, d_model, dtype=dtype, device=device)
    torch.ops.pe_ext.fill_table_.default(out, _checked_offset(offset), base)
    return out


# The fake kernels serve torch.compile and meta tensors (and calls mixing them with real ones, which dispatch here):
# they run the ops' checks, all but those that read addresses.
@torch.library.register_fake("pe_ext::add_pe")
def _add_pe_fake(x, table=None, offset=0, scale=1.0, base=DEFAULT_BASE, seq_dim=1):
    reference.check_add_pe(x, table, offset, scale, base, seq_dim, None, reference.NEW, memory=False)
    return torch.empty_like(x)


@torch.library.register_fake("pe_ext::add_pe_")
def _add_pe_inplace_fake(x, table=None, offset=0, scale=1.0, base=DEFAULT_BASE, seq_dim=1):
    reference.check_add_pe(x, table, offset, scale, base, seq_dim, x, reference.IN_PLACE, memory=False)


@torch.library.register_fake("pe_ext::add_pe_out")
def _add_pe_out_fake(x, table, offset, scale, base, seq_dim, out):
    reference.check_add_pe(x, table, offset, scale, base, seq_dim, out, reference.OUT, memory=False)


@torch.library.register_fake("pe_ext::fill_table_")
def _fill_table_fake(out, offset=0, base=DEFAULT_BASE):
    reference.check_fill_table(out, offset, base, memory=False)


def _add_pe_setup_context(ctx, inputs, output):
    x, table, offset, scale, _base, seq_dim = inputs
    ctx.scale = scale
    ctx.offset = offset
    ctx.seq_dim = seq_dim % x.dim()
    ctx.table_shape = None if table is None else table.shape
    ctx.table_dtype = None if table is None else table.dtype


def _add_pe_backward(ctx, grad):
    grad_x = grad * ctx.scale if ctx.needs_input_grad[0] else None
    grad_table = None
    if ctx.needs_input_grad[1]:
        # Each table row used at position offset + l receives the gradient summed over the batch.
        per_position = grad.sum(dim=1 - ctx.seq_dim) if grad.dim() == 3 else grad
        grad_table = grad.new_zeros(ctx.table_shape, dtype=ctx.table_dtype)
        rows = grad_table[0] if len(ctx.table_shape) == 3 else grad_table
        rows[ctx.offset : ctx.offset + per_position.shape[0]] = per_position
    return grad_x, grad_table, None, None, None, None


torch.library.register_autograd("pe_ext::add_pe", _add_pe_backward, setup_context=_add_pe_setup_context)
