"""The sinusoidal ops in pure PyTorch, with the schemas' signatures (schema.py): each checks its arguments as the C++
ops do (checks.py), then computes with the readable reference (reference.py). They serve torch.ops.pe_ext.* where the
compiled extension is missing (or was built without CUDA)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks, reference
from .schema import with_defaults


def add_pe(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, seq_dim: int = 1,
           **options) -> Tensor:
    """out = x * scale + alpha * pe(position) along dimension seq_dim of x, then dropout."""
    options = with_defaults(**options)
    dim, ids = checks.check_add_pe(x, table, offset, scale, seq_dim, options, None, checks.NEW)
    return reference.add_pe_values(x, table, offset, scale, options, ids, dim)


def add_pe_(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, seq_dim: int = 1,
            **options) -> None:
    """add_pe written into x."""
    options = with_defaults(**options)
    dim, ids = checks.check_add_pe(x, table, offset, scale, seq_dim, options, None, checks.IN_PLACE)
    x.copy_(reference.add_pe_values(x, table, offset, scale, options, ids, dim))


def add_pe_out(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, out: Tensor,
               **options) -> None:
    """add_pe written into out, which has x's shape, dtype and device and does not overlap x."""
    options = with_defaults(**options)
    dim, ids = checks.check_add_pe(x, table, offset, scale, seq_dim, options, out, checks.OUT)
    out.copy_(reference.add_pe_values(x, table, offset, scale, options, ids, dim))


def fill_table_(out: Tensor, offset: int = 0, **options) -> None:
    """out[p, :] = alpha * pe(offset + p, :) (or of offset + positions[p]): the add with x = 0 along the rows."""
    options = with_defaults(**options)
    ids = checks.check_fill_table(out, offset, options)
    out.copy_(reference.add_pe_values(torch.zeros_like(out), None, offset, 1.0, options, ids, 0))


KERNELS = {"add_pe": add_pe, "add_pe_": add_pe_, "add_pe_out": add_pe_out, "fill_table_": fill_table_}
