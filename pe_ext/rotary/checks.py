"""The rotary ops' argument checks: the Python twins of csrc/rotary/ops.cpp's prepare_rotary (and of the autograd
kernel's refusal of trainable constants), in the same order and with the same messages. The fallback runs them
before computing, and the fake kernels (torch.compile, meta tensors) run those that need no data."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import (
    INT64_MAX,
    check_distinct_elements,
    check_no_shared_memory,
    check_offset,
    check_same_device,
    check_supported_dtype,
    check_writable,
    has_visible_memory,
)

LAYOUT_SHAPES = {
    "bhsd": "(batch, heads, seq, head_dim)",
    "bshd": "(batch, seq, heads, head_dim)",
    "thd": "(total_tokens, heads, head_dim)",
}


@dataclass
class Problem:
    """One checked call, seen as [batch, seq, heads, head_dim] (csrc/rotary/ops.h's RotaryProblem)."""

    q: Tensor
    k: Tensor | None
    rotary_dim: int
    style: str
    freqs: Tensor | None  # (rotary_dim / 2,) in the math dtype when given as inv_freq; None from base or with tables
    base: float
    cos: Tensor | None  # [batch, rows, rotary_dim] (expanded); None without tables
    sin: Tensor | None
    positions: Tensor | None  # int64 [batch, seq]
    cu_seqlens: Tensor | None  # int64 (num_seqs + 1,)
    offset: int
    attention_scaling: float
    precise_angle: bool
    transpose: bool


def canonical(t: Tensor, layout: str) -> Tensor:
    """t as [batch, seq, heads, head_dim]."""
    return t.transpose(1, 2) if layout == "bhsd" else t if layout == "bshd" else t.unsqueeze(0)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUT_SHAPES:
        raise ValueError("pe_ext: layout must be 'bhsd' (batch, heads, seq, head_dim), 'bshd' (batch, seq, heads, "
                         f"head_dim) or 'thd' (total_tokens, heads, head_dim), got '{layout}'")


def _check_style(style: str) -> None:
    if style not in ("neox", "gptj"):
        raise ValueError("pe_ext: style must be 'neox' (rotate_half pairs (i, i + rotary_dim/2)) or 'gptj' "
                         f"(interleaved pairs (2i, 2i + 1)), got '{style}'")


def _check_qk(q: Tensor, k: Tensor | None, layout: str) -> None:
    rank = 3 if layout == "thd" else 4
    if q.dim() != rank:
        raise ValueError(f"pe_ext: q must be {rank}-D {LAYOUT_SHAPES[layout]} for layout '{layout}', got shape "
                         f"{list(q.shape)}")
    check_supported_dtype(q, "q")
    if k is None:
        return
    if k.dim() != rank:
        raise ValueError(f"pe_ext: k must be {rank}-D {LAYOUT_SHAPES[layout]} like q, got shape {list(k.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"pe_ext: k must have q's dtype ({q.dtype}), got {k.dtype}")
    check_same_device(k, "k", q, "q")
    qc, kc = canonical(q, layout), canonical(k, layout)
    if (kc.shape[0], kc.shape[1], kc.shape[3]) != (qc.shape[0], qc.shape[1], qc.shape[3]):
        raise ValueError(f"pe_ext: k must match q in every dimension but heads (q has shape {list(q.shape)}, k "
                         f"{list(k.shape)})")


def _check_writes(q: Tensor, k: Tensor | None, options: dict, addresses: bool) -> None:
    if not addresses:
        return
    check_distinct_elements(q, "q")
    if k is not None:
        check_distinct_elements(k, "k")
        check_no_shared_memory(k, "k", q, "q")
    for name in ("cos", "sin", "inv_freq", "positions", "cu_seqlens"):
        if options[name] is not None:
            check_no_shared_memory(q, "q", options[name], name)
            if k is not None:
                check_no_shared_memory(k, "k", options[name], name)


def _checked_rotary_dim(rotary_dim: int, head_dim: int, source: str) -> int:
    if not (rotary_dim > 0 and rotary_dim % 2 == 0 and rotary_dim <= head_dim):
        raise ValueError(f"pe_ext: rotary_dim ({source}) must be even and in [2, head_dim = {head_dim}], got "
                         f"{rotary_dim}")
    return rotary_dim


def _frequencies(options: dict, q: Tensor, head_dim: int) -> tuple[int, Tensor | None]:
    """(rotary_dim, the frequencies in q's math dtype, or None where only the checks are wanted)."""
    if not math.isfinite(options["attention_scaling"]):
        raise ValueError(f"pe_ext: attention_scaling must be finite, got {options['attention_scaling']}")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    inv_freq = options["inv_freq"]
    if inv_freq is not None:
        if inv_freq.dim() != 1:
            raise ValueError(f"pe_ext: inv_freq must be 1-D (rotary_dim / 2,), got shape {list(inv_freq.shape)}")
        if inv_freq.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"pe_ext: inv_freq must be float32 or float64, got {inv_freq.dtype}")
        check_same_device(inv_freq, "inv_freq", q, "q")
        rotary_dim = options["rotary_dim"]
        rotary_dim = _checked_rotary_dim(2 * inv_freq.shape[0] if rotary_dim is None else rotary_dim, head_dim,
                                         "rotary_dim")
        if inv_freq.shape[0] != rotary_dim // 2:
            raise ValueError(f"pe_ext: inv_freq must hold rotary_dim / 2 = {rotary_dim // 2} frequencies, got "
                             f"{inv_freq.shape[0]}")
        return rotary_dim, inv_freq.to(acc)
    base = options["base"]
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"pe_ext: base must be a positive finite number, got {base}")
    rotary_dim = _checked_rotary_dim(head_dim if options["rotary_dim"] is None else options["rotary_dim"], head_dim,
                                     "rotary_dim")
    return rotary_dim, None


def _check_table(t: Tensor, name: str, q: Tensor, batch: int) -> None:
    if t.dim() not in (2, 3):
        raise ValueError(f"pe_ext: {name} must be (rows, rotary_dim) or (batch or 1, rows, rotary_dim), got shape "
                         f"{list(t.shape)}")
    if t.dim() == 3 and t.shape[0] not in (1, batch):
        raise ValueError(f"pe_ext: {name}'s first dimension ({t.shape[0]}) must be 1 or q's batch ({batch})")
    check_supported_dtype(t, name)
    check_same_device(t, name, q, "q")


def _tables(options: dict, q: Tensor, batch: int, head_dim: int) -> tuple[int, Tensor, Tensor]:
    cos, sin = options["cos"], options["sin"]
    if cos is None or sin is None:
        raise ValueError("pe_ext: give both cos and sin, or neither")
    if options["inv_freq"] is not None or options["precise_angle"] or options["attention_scaling"] != 1.0:
        raise ValueError("pe_ext: with cos and sin tables, inv_freq, precise_angle and attention_scaling do not apply "
                         "(the tables hold the values); leave them at their defaults")
    _check_table(cos, "cos", q, batch)
    _check_table(sin, "sin", q, batch)
    if sin.shape != cos.shape:
        raise ValueError(f"pe_ext: sin must have cos's shape {list(cos.shape)}, got {list(sin.shape)}")
    rotary_dim = _checked_rotary_dim(cos.shape[-1], head_dim, "cos's last dimension")
    if options["rotary_dim"] is not None and options["rotary_dim"] != rotary_dim:
        raise ValueError(f"pe_ext: rotary_dim ({options['rotary_dim']}) must equal cos's last dimension ({rotary_dim})")

    def batched(t):
        rows = t.unsqueeze(0) if t.dim() == 2 else t
        return rows.expand(batch, rows.shape[1], rows.shape[2])

    return rotary_dim, batched(cos), batched(sin)


def _cu_seqlens(cu: Tensor, layout: str, q: Tensor, total: int, has_storage: bool) -> tuple[Tensor, int]:
    """(cu_seqlens as int64, the longest sequence's length or -1 where the values are not read)."""
    if layout != "thd":
        raise ValueError("pe_ext: cu_seqlens needs packed tokens (layout 'thd', q of shape (total_tokens, heads, "
                         "head_dim))")
    if cu.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pe_ext: cu_seqlens must be an int32 or int64 tensor, got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"pe_ext: cu_seqlens must be 1-D (num_seqs + 1,) with at least one sequence, got shape "
                         f"{list(cu.shape)}")
    check_same_device(cu, "cu_seqlens", q, "q")
    cu = cu.long()
    if not has_storage or (cu.is_cuda and torch.cuda.is_current_stream_capturing()):
        return cu, -1
    values = cu.tolist()
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            raise ValueError(f"pe_ext: cu_seqlens must be non-decreasing, got {values[i - 1]} then {values[i]} at "
                             f"index {i}")
    if values[0] != 0 or values[-1] != total:
        raise ValueError(f"pe_ext: cu_seqlens must run from 0 to total_tokens ({total}), got {values[0]} .. "
                         f"{values[-1]}")
    return cu, max(b - a for a, b in itertools.pairwise(values))


def _positions(ids: Tensor, layout: str, q: Tensor, batch: int, seq: int) -> Tensor:
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pe_ext: positions must be an int64 or int32 tensor, got {ids.dtype}")
    check_same_device(ids, "positions", q, "q")
    shared = ids.dim() == 1 and ids.shape[0] == seq
    per_row = layout != "thd" and ids.dim() == 2 and tuple(ids.shape) == (batch, seq)
    if not (shared or per_row):
        expected = " (one per token)" if layout == "thd" else " (shared by the batch) or (batch, seq)"
        raise ValueError(f"pe_ext: positions must have shape ({seq},){expected}, got {list(ids.shape)}")
    ids = ids.long()
    return ids.unsqueeze(0).expand(batch, seq) if shared else ids


def _check_table_rows(p: Problem, longest_sequence: int) -> None:
    rows, seq = p.cos.shape[1], p.q.shape[1]
    low, high = p.offset, p.offset + seq - 1
    if (p.positions is not None or p.cu_seqlens is not None) and p.q.is_cuda \
            and torch.cuda.is_current_stream_capturing():
        raise ValueError("pe_ext: cos and sin tables with positions or cu_seqlens need their values checked against "
                         "the tables' rows, which cannot be read during CUDA graph capture; capture the computed form "
                         "(no cos/sin) instead")
    if p.positions is not None:
        if p.positions.numel() == 0:
            return
        lo, hi = int(p.positions.min()), int(p.positions.max())
        if hi > INT64_MAX - p.offset:
            raise ValueError(f"pe_ext: offset ({p.offset}) + positions (up to {hi}) overflows int64")
        low, high = p.offset + lo, p.offset + hi
    elif p.cu_seqlens is not None:
        high = p.offset + longest_sequence - 1
    if seq == 0:
        return
    if not (low >= 0 and high < rows):
        raise ValueError(f"pe_ext: positions {low} .. {high} must index rows of cos and sin, which have {rows}")


def check_rotary(q: Tensor, k: Tensor | None, options: dict, in_place: bool, has_storage: bool = True) -> Problem:
    """rotary's and rotary_'s checks, in csrc/rotary/ops.cpp's order. has_storage=False (fake tensors, which hold no
    data) leaves out those that read addresses or values, as do fake tensors and functorch's wrappers (vmap's, for the
    composites that serve as batching rules)."""
    # Fake tensors (the fallback's composites traced by torch.compile) and functorch's wrappers hide data and addresses.
    has_storage = has_storage and has_visible_memory(q, k, *(t for t in options.values() if isinstance(t, Tensor)))
    # What the compiled ops check in their Autograd and ADInplaceOrView kernels comes first, as there.
    check_constants(options)
    if in_place:
        check_writable(q, "q")
        if k is not None:
            check_writable(k, "k")
    layout = options["layout"]
    _check_layout(layout)
    _check_qk(q, k, layout)
    _check_style(options["style"])
    if in_place:
        _check_writes(q, k, options, has_storage)
    qc = canonical(q, layout)
    batch, seq, _, head_dim = qc.shape
    offset = options["offset"]
    check_offset(offset, seq)
    freqs = cos = sin = None
    if options["cos"] is not None or options["sin"] is not None:
        rotary_dim, cos, sin = _tables(options, q, batch, head_dim)
    else:
        rotary_dim, freqs = _frequencies(options, q, head_dim)
    if options["positions"] is not None and options["cu_seqlens"] is not None:
        raise ValueError("pe_ext: give positions or cu_seqlens, not both")
    cu_seqlens, longest = None, -1
    if options["cu_seqlens"] is not None:
        cu_seqlens, longest = _cu_seqlens(options["cu_seqlens"], layout, q, seq, has_storage)
    positions = None
    if options["positions"] is not None:
        positions = _positions(options["positions"], layout, q, batch, seq)
    p = Problem(qc, None if k is None else canonical(k, layout), rotary_dim, options["style"], freqs, options["base"],
                cos, sin, positions, cu_seqlens, offset, options["attention_scaling"], options["precise_angle"],
                options["transpose"])
    if cos is not None and has_storage:
        _check_table_rows(p, longest)
    return p


def check_constants(options: dict) -> None:
    """The Autograd kernel's refusal: cos, sin and inv_freq are constants, never given a gradient."""
    if not torch.is_grad_enabled():
        return
    for name in ("inv_freq", "cos", "sin"):
        t = options[name]
        if t is not None and t.requires_grad:
            raise RuntimeError(f"pe_ext: {name} requires grad, but rotary treats cos, sin and inv_freq as constants "
                               "(as Hugging Face's buffers are) and computes no gradient for them; pass "
                               f"{name}.detach()")
