"""The sinusoidal ops' argument checks: the Python twins of csrc/sinusoidal/ops.cpp's prepare_add_pe and
prepare_fill_table, in the same order and with the same messages. The fallback runs them before computing, and the
fake kernels (torch.compile, meta tensors) run those that need no data."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import (
    INT64_MAX,
    SUPPORTED_DTYPES,
    check_distinct_elements,
    check_no_shared_memory,
    check_offset_fits,
    check_same_device,
    check_supported_dtype,
    check_untracked_out,
    check_writable,
    has_visible_memory,
)
from . import reference, schema

# Where a call writes its result, as csrc/sinusoidal/ops.h's Write: a fresh tensor (add_pe), x itself (add_pe_), or
# a caller's tensor (add_pe_out).
NEW, IN_PLACE, OUT = "new", "in_place", "out"
LAYOUTS = ("interleaved", "concatenated", "concatenated_cos_first")


def _checked_seq_dim(x: Tensor, seq_dim: int, scale: float) -> int:
    if x.dim() not in (2, 3):
        raise ValueError(
            "pe_ext: x must be 2-D (seq_len, d_model) or 3-D (batch, seq_len, d_model) or (seq_len, batch, d_model), "
            f"got a {x.dim()}-D tensor of shape {list(x.shape)}"
        )
    check_supported_dtype(x, "x")
    if not (-x.dim() <= seq_dim < x.dim() - 1 and seq_dim != -1):
        raise ValueError(
            f"pe_ext: seq_dim must index a dimension of x other than the last (d_model); got {seq_dim} "
            f"for a {x.dim()}-D x"
        )
    if not math.isfinite(scale):
        raise ValueError(f"pe_ext: scale must be finite, got {scale}")
    return seq_dim % x.dim()


def _check_recipe(options: dict) -> None:
    if options["frequency_rounding"] not in ("float32", "correct"):
        raise ValueError(f"pe_ext: frequency_rounding must be 'float32' or 'correct', got "
                         f"'{options['frequency_rounding']}'")
    if options["frequencies"] == "paper":
        if not (math.isfinite(options["base"]) and options["base"] > 0):
            raise ValueError(f"pe_ext: base must be a positive finite number, got {options['base']}")
        return
    if options["frequencies"] != "timescales":
        raise ValueError(f"pe_ext: frequencies must be 'paper' or 'timescales', got '{options['frequencies']}'")
    low, high = options["min_timescale"], options["max_timescale"]
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError("pe_ext: timescales need finite 0 < min_timescale <= max_timescale, got "
                         f"min_timescale={low}, max_timescale={high}")


def check_frequencies_untracked(inv_freq: Tensor | None) -> None:
    """No gradient flows to a caller's frequencies: refuse them when autograd tracks them."""
    if inv_freq is not None and torch.is_grad_enabled() and inv_freq.requires_grad:
        raise RuntimeError("pe_ext: inv_freq requires grad, but pe_ext does not differentiate with respect to the "
                           "frequencies; pass inv_freq.detach()")


def _check_inv_freq(options: dict, d_model: int, like: Tensor, like_name: str) -> None:
    inv_freq = options["inv_freq"]
    if inv_freq is None:
        return
    if any(options[k] != schema.DEFAULTS[k] for k in schema.RECIPE):
        raise ValueError("pe_ext: inv_freq gives the frequencies, so base, frequencies, min_timescale, max_timescale "
                         "and frequency_rounding must keep their defaults")
    if inv_freq.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: inv_freq must be float32, float64, float16 or bfloat16, got {inv_freq.dtype}")
    count = reference.num_frequencies(d_model, options["layout"])
    if inv_freq.dim() != 1 or inv_freq.shape[0] != count:
        raise ValueError(f"pe_ext: inv_freq must have shape ({count},) (one frequency per sin/cos pair of d_model "
                         f"{d_model} in this layout), got {list(inv_freq.shape)}")
    check_same_device(inv_freq, "inv_freq", like, like_name)
    check_frequencies_untracked(inv_freq)


def _check_encoding(options: dict, like: Tensor, like_name: str) -> None:
    """csrc/sinusoidal/ops.cpp's checked_encoding: like is x (or out when building a table)."""
    if options["layout"] not in LAYOUTS:
        raise ValueError(f"pe_ext: layout must be 'interleaved', 'concatenated' or 'concatenated_cos_first', got "
                         f"'{options['layout']}'")
    _check_recipe(options)
    _check_inv_freq(options, like.shape[-1], like, like_name)


def _check_out(out: Tensor, x: Tensor) -> None:
    if out.shape != x.shape:
        raise ValueError(f"pe_ext: out must have x's shape {list(x.shape)}, got {list(out.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"pe_ext: out must have x's dtype ({x.dtype}), got {out.dtype}")
    check_same_device(out, "out", x, "x")


def _check_padding_and_dropout(options: dict, like: Tensor) -> None:
    if options["padding_idx"] < -1:
        raise ValueError(f"pe_ext: padding_idx must be >= 0, or -1 for none; got {options['padding_idx']}")
    if not 0 <= options["dropout"] < 1:
        raise ValueError(f"pe_ext: dropout must be in [0, 1), got {options['dropout']}")
    seed = options["seed"]
    if seed is None:
        if options["dropout"] > 0:
            raise ValueError("pe_ext: dropout > 0 needs seed, a one-element int64 tensor, e.g. "
                             "torch.randint(2**63 - 1, ())")
        return
    if seed.dtype != torch.int64:
        raise TypeError(f"pe_ext: seed must be an int64 tensor, got {seed.dtype}")
    if seed.numel() != 1:
        raise ValueError(f"pe_ext: seed must hold one value, got shape {list(seed.shape)}")
    if seed.device.type != "cpu" and seed.device != like.device:
        raise ValueError(f"pe_ext: seed is on {seed.device} but must be on the CPU or on x's device ({like.device})")


def _check_alpha(alpha: Tensor | None, like: Tensor) -> None:
    if alpha is None:
        return
    if alpha.numel() != 1:
        raise ValueError(f"pe_ext: alpha must hold one value (a 0-dim tensor), got shape {list(alpha.shape)}")
    if alpha.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: alpha must be a floating tensor, got {alpha.dtype}")
    check_same_device(alpha, "alpha", like, "x")


class PositionRange(NamedTuple):
    """The positions a call uses: ids (offset included; int64, or float64 when fractional; None for offset + l, or
    without storage to read them from), and the range of the integer ones, first (the smallest) to end (one past
    the largest), both offset when there are none."""

    ids: Tensor | None
    first: int
    end: int
    fractional: bool = False


def _check_sum_fits(offset: int, low: int, high: int) -> None:
    """offset + every id, and one past the largest, fit in int64."""
    if high >= INT64_MAX - offset if offset >= 0 else low < -INT64_MAX - 1 - offset:
        raise ValueError(f"pe_ext: offset ({offset}) + positions ({high if offset >= 0 else low}) overflows int64")


def _checked_positions(options: dict, like: Tensor, like_name: str, leading, seq_len: int, offset: int,
                       has_storage: bool) -> PositionRange:
    check_offset_fits(offset, seq_len)
    positions = options["positions"]
    if positions is None:
        return PositionRange(None, offset, offset + seq_len)
    fractional = positions.dtype.is_floating_point
    if positions.dtype not in (torch.int64, torch.int32) and not (fractional and positions.dtype in SUPPORTED_DTYPES):
        raise TypeError("pe_ext: positions must be an int64 or int32 tensor (ids), or a float32, float64, float16 or "
                        f"bfloat16 tensor (fractional positions), got {positions.dtype}")
    check_same_device(positions, "positions", like, like_name)
    if not (positions.shape == leading or (positions.dim() == 1 and positions.shape[0] == seq_len)):
        raise ValueError(f"pe_ext: positions must have shape {list(leading)} (one per element of x but d_model) or "
                         f"({seq_len},) (shared by the batch), got {list(positions.shape)}")
    if not has_storage:
        return PositionRange(None, offset, offset + seq_len, fractional)
    ids = positions.double() + offset if fractional else positions.long() + offset
    if positions.numel() == 0:
        return PositionRange(ids, offset, offset, fractional)
    if fractional:
        low, high = float(positions.min()), float(positions.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"pe_ext: positions must be finite, got values from {low} to {high}")
        return PositionRange(ids, offset, offset, True)
    low, high = int(positions.min()), int(positions.max())
    _check_sum_fits(offset, low, high)
    return PositionRange(ids, offset + low, offset + high + 1)


def _check_table(table: Tensor, x: Tensor, d_model: int, used: PositionRange) -> None:
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
    if used.fractional:
        raise ValueError("pe_ext: fractional (floating-point) positions index no table row; compute them on the fly "
                         "(no table)")
    if used.first < 0:
        raise ValueError(f"pe_ext: table rows start at position 0, but the call uses position {used.first} "
                         "(offset + positions); compute negative positions on the fly (no table)")
    if used.end > rows.shape[0]:
        raise ValueError(
            f"pe_ext: positions up to {used.end - 1} need {used.end} table rows, but the table "
            f"has {rows.shape[0]} (max_len); raise max_len or compute on the fly (no table)"
        )


def check_add_pe(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, options: dict,
                 out: Tensor | None, write: str, has_storage: bool = True):
    """add_pe's checks, in csrc/sinusoidal/ops.cpp's order. has_storage=False (fake tensors, which hold no data)
    leaves out those that read addresses or values; functorch's wrappers (vmap's, for the composites that serve as
    batching rules) hide addresses only. Returns (seq_dim, offset + positions or None)."""
    # What the compiled ops check in their Autograd and ADInplaceOrView kernels comes first, as there.
    if write == OUT:
        check_untracked_out({"x": x, "table": table, "out": out, "alpha": options["alpha"]}, "pe_ext::add_pe_out")
    written, written_name = (x, "x") if write == IN_PLACE else (out, "out")
    if written is not None:
        check_writable(written, written_name)
    dim = _checked_seq_dim(x, seq_dim, scale)
    _check_encoding(options, x, "x")
    if write == OUT:
        _check_out(out, x)
    addresses = has_storage and has_visible_memory(x, out, table)
    if written is not None and addresses:
        check_distinct_elements(written, written_name)
        if write == OUT:
            check_no_shared_memory(out, "out", x, "x")
    _check_padding_and_dropout(options, x)
    _check_alpha(options["alpha"], x)
    used = _checked_positions(options, x, "x", x.shape[:-1], x.shape[dim], offset, has_storage)
    if table is not None:
        _check_table(table, x, x.shape[-1], used)
        if written is not None and addresses:
            check_no_shared_memory(written, written_name, table, "table")
    return dim, used.ids


def check_fill_table(out: Tensor, offset: int, options: dict, has_storage: bool = True):
    """fill_table_'s checks, in csrc/sinusoidal/ops.cpp's order (has_storage: as in check_add_pe). Returns
    offset + positions, or None."""
    check_writable(out, "out")
    if out.dim() != 2:
        raise ValueError(f"pe_ext: out must be 2-D (num_positions, d_model), got shape {list(out.shape)}")
    check_supported_dtype(out, "out")
    _check_encoding(options, out, "out")
    if has_storage and has_visible_memory(out):
        check_distinct_elements(out, "out")
    _check_padding_and_dropout(options, out)
    _check_alpha(options["alpha"], out)
    return _checked_positions(options, out, "out", out.shape[:-1], out.shape[0], offset, has_storage).ids
