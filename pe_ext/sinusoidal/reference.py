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


def _frequency_params(d_model: int, base: float, layout: str, frequencies: str, min_timescale: float,
                      max_timescale: float) -> tuple[int, float, float]:
    """(num_freqs, freq_step, freq_scale) with freq(i) = freq_scale * exp(i * freq_step), as csrc/pe_math.h."""
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
    """pe(p, :) for each integer position p, computed in `dtype` (see csrc/pe_math.h for the conventions)."""
    num_freqs, step, scale = _frequency_params(d_model, base, layout, frequencies, min_timescale, max_timescale)
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


def _check_positions(offset: int, seq_len: int) -> None:
    if offset < 0:
        raise ValueError(f"pe_ext: offset must be >= 0, got {offset}")
    if offset > 0 and offset > INT64_MAX - seq_len:  # offset 0 first: no guard on a symbolic seq_len when tracing
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
        raise ValueError(f"pe_ext: {name}'s memory overlaps {read_name}'s, which the op still reads while writing "
                         f"{name}; pass a separate tensor (e.g. {read_name}.clone())")


def _check_untracked(t: Tensor | None, name: str, op: str) -> None:
    # No autograd formula for the writing ops: refuse tensors autograd tracks (as csrc/ops.cpp and torch's out= ops).
    if t is not None and torch.is_grad_enabled() and t.requires_grad:
        raise RuntimeError(f"pe_ext: {name} requires grad, but {op} has no autograd formula; use the out-of-place "
                           "add_sinusoidal_pe, or run under torch.no_grad()")


# Where a call writes its result, as csrc/pe_ops.h's Write: a fresh tensor (add_pe), x itself (add_pe_), or a
# caller's tensor (add_pe_out).
NEW, IN_PLACE, OUT = "new", "in_place", "out"


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
            f"pe_ext: positions up to {last_position - 1} need {last_position} table rows, but the table "
            f"has {rows.shape[0]} (max_len); raise max_len or compute on the fly (no table)"
        )


def check_add_pe(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, keywords: dict,
                 out: Tensor | None, write: str, data: bool = True):
    """add_pe's checks, in csrc/ops.cpp's order. data=False (fake tensors, which hold no data) leaves out those that
    read addresses or values. Returns (seq_dim, offset + positions or None, one past the largest position)."""
    dim = _checked_seq_dim(x, seq_dim)
    if not math.isfinite(scale):
        raise ValueError(f"pe_ext: scale must be finite, got {scale}")
    _check_encoding(x.shape[-1], keywords)
    if out is not None and write == OUT:
        if out.shape != x.shape:
            raise ValueError(f"pe_ext: out must have x's shape {list(x.shape)}, got {list(out.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"pe_ext: out must have x's dtype ({x.dtype}), got {out.dtype}")
        if out.device != x.device:
            raise ValueError(f"pe_ext: out is on {out.device} but x is on {x.device}")
    if write != NEW:
        op = "add_pe_ (in place)" if write == IN_PLACE else "add_pe_out (out=)"
        for name, t in (("x", x), ("table", table), ("alpha", keywords["alpha"])):
            _check_untracked(t, name, op)
        if write == OUT:
            _check_untracked(out, "out", op)
    written, written_name = (x, "x") if write == IN_PLACE else (out, "out")
    if written is not None and data:
        _check_distinct_elements(written, written_name)
        if write == OUT:
            _check_no_shared_memory(out, "out", x, "x")
    _check_padding_and_dropout(keywords)
    _check_alpha(keywords["alpha"], x)
    ids, last_position = _checked_positions(keywords, x, x.shape[:-1], x.shape[dim], offset, data)
    if table is not None:
        _check_table(table, x, x.shape[-1], last_position)
        if written is not None and data:
            _check_no_shared_memory(written, written_name, table, "table")
    return dim, ids, last_position


def _check_padding_and_dropout(keywords: dict) -> None:
    if keywords["padding_idx"] < -1:
        raise ValueError(f"pe_ext: padding_idx must be >= 0, or -1 for none; got {keywords['padding_idx']}")
    if not 0 <= keywords["dropout"] < 1:
        raise ValueError(f"pe_ext: dropout must be in [0, 1), got {keywords['dropout']}")


def check_fill_table(out: Tensor, offset: int, keywords: dict, data: bool = True) -> None:
    """fill_table_'s checks, in csrc/ops.cpp's order (data: as in check_add_pe)."""
    if out.dim() != 2:
        raise ValueError(f"pe_ext: out must be 2-D (num_positions, d_model), got shape {list(out.shape)}")
    _check_dtype(out, "out")
    _check_encoding(out.shape[1], keywords)
    _check_untracked(out, "out", "fill_table_")
    _check_untracked(keywords["alpha"], "alpha", "fill_table_")
    if data:
        _check_distinct_elements(out, "out")
    _check_padding_and_dropout(keywords)
    _check_alpha(keywords["alpha"], out)
    _checked_positions(keywords, out, out.shape[:-1], out.shape[0], offset, data)


def _add_pe_values(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, keywords: dict,
                   ids: Tensor | None, dim: int) -> Tensor:
    """x * scale + alpha * pe(position), then dropout, for checked arguments (see check_add_pe)."""
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
        pe = pe_rows(flat, d_model, acc, **_encoding_only(keywords))
    if keywords["padding_idx"] >= 0:
        pe = torch.where((flat == keywords["padding_idx"])[:, None], torch.zeros_like(pe), pe)
    if keywords["alpha"] is not None:
        pe = pe * keywords["alpha"].reshape(()).to(acc)
    out = x.to(acc) * scale + pe.reshape(*shape, d_model)
    dropout = keywords["dropout"]
    if dropout > 0:
        # Logical index (b * seq_len + l) * d_model + col of every element, laid out like x.
        batch_first_shape = (1 if x.dim() == 2 else x.shape[1 - dim], seq_len, d_model)
        index = torch.arange(math.prod(batch_first_shape), device=x.device).reshape(batch_first_shape)
        index = index[0] if x.dim() == 2 else (index if dim == 1 else index.transpose(0, 1))
        keep = dropout_keeps(index, dropout, keywords["seed"])
        out = torch.where(keep, out * (1.0 / (1.0 - dropout)), torch.zeros((), dtype=acc, device=x.device))
    return out.to(x.dtype)


_MASK32 = 0xFFFFFFFF


def philox4x32_10(counter: Tensor, seed: int) -> list[Tensor]:
    """Philox4x32-10 of (counter, 0) under key seed, in int64 tensors holding uint32 values (csrc/pe_math.h)."""
    c = [counter & _MASK32, (counter >> 32) & _MASK32, torch.zeros_like(counter), torch.zeros_like(counter)]
    seed &= 2**64 - 1
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57  # wraps in int64, whose low 64 bits stay exact
        hi0, lo0 = (p0 >> 32) & _MASK32, p0 & _MASK32
        hi1, lo1 = (p1 >> 32) & _MASK32, p1 & _MASK32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    return c


def dropout_keeps(index: Tensor, p: float, seed: int) -> Tensor:
    """Whether each element (by logical index) survives dropout with probability p under `seed`."""
    words = torch.stack(philox4x32_10(index // 4, seed))
    bits = words.gather(0, (index % 4).unsqueeze(0)).squeeze(0)
    return (bits >> 8).double() * (1.0 / 16777216.0) >= p


def _check_alpha(alpha: Tensor | None, like: Tensor) -> None:
    if alpha is None:
        return
    if alpha.numel() != 1:
        raise ValueError(f"pe_ext: alpha must hold one value (a 0-dim tensor), got shape {list(alpha.shape)}")
    if alpha.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: alpha must be a floating tensor, got {alpha.dtype}")
    if alpha.device != like.device:
        raise ValueError(f"pe_ext: alpha is on {alpha.device} but x is on {like.device}")


def _checked_positions(keywords: dict, like: Tensor, leading, seq_len: int, offset: int, data: bool = True):
    """(offset + positions, one past the largest position), or (None, offset + seq_len) without positions (or
    without data to read them)."""
    _check_positions(offset, seq_len)
    positions = keywords["positions"]
    if positions is None:
        return None, offset + seq_len
    if positions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pe_ext: positions must be an int64 or int32 tensor, got {positions.dtype}")
    if positions.device != like.device:
        raise ValueError(f"pe_ext: positions is on {positions.device} but x is on {like.device}")
    if not (positions.shape == leading or (positions.dim() == 1 and positions.shape[0] == seq_len)):
        raise ValueError(f"pe_ext: positions must have shape {list(leading)} (one per element of x but d_model) or "
                         f"({seq_len},) (shared by the batch), got {list(positions.shape)}")
    if not data:
        return None, offset + seq_len
    if positions.numel() == 0:
        return positions.long() + offset, offset
    low, high = int(positions.min()), int(positions.max())
    if low < 0:
        raise ValueError(f"pe_ext: positions must be >= 0, got {low}")
    if high >= INT64_MAX - offset:
        raise ValueError(f"pe_ext: offset ({offset}) + positions (up to {high}) overflows int64")
    return positions.long() + offset, offset + high + 1


def _check_encoding(d_model: int, keywords: dict) -> None:
    _frequency_params(d_model, *(keywords[k] for k in ("base", "layout", "frequencies", "min_timescale",
                                                       "max_timescale")))


def _encoding_only(keywords: dict) -> dict:
    return {k: keywords[k] for k in ("base", "layout", "frequencies", "min_timescale", "max_timescale",
                                     "precise_angle")}


# The ops, with the schemas' signatures (pe_ext/_backend.py): the keywords are pe_rows' encoding keywords and
# positions (explicit ids), padding_idx (the position with a zero pe), alpha (a 0-dim factor on pe), dropout and seed.
def add_pe(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, seq_dim: int = 1,
           **keywords) -> Tensor:
    """out = x * scale + alpha * pe(position) along dimension seq_dim of x, then dropout."""
    keywords = _keywords(**keywords)
    dim, ids, _ = check_add_pe(x, table, offset, scale, seq_dim, keywords, None, NEW)
    return _add_pe_values(x, table, offset, scale, seq_dim, keywords, ids, dim)


def add_pe_(x: Tensor, table: Tensor | None = None, offset: int = 0, scale: float = 1.0, seq_dim: int = 1,
            **keywords) -> None:
    """add_pe written into x."""
    keywords = _keywords(**keywords)
    dim, ids, _ = check_add_pe(x, table, offset, scale, seq_dim, keywords, None, IN_PLACE)
    x.copy_(_add_pe_values(x, table, offset, scale, seq_dim, keywords, ids, dim))


def add_pe_out(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, out: Tensor,
               **keywords) -> None:
    """add_pe written into out, which has x's shape, dtype and device and does not overlap x."""
    keywords = _keywords(**keywords)
    dim, ids, _ = check_add_pe(x, table, offset, scale, seq_dim, keywords, out, OUT)
    out.copy_(_add_pe_values(x, table, offset, scale, seq_dim, keywords, ids, dim))


def fill_table_(out: Tensor, offset: int = 0, **keywords) -> None:
    """out[p, :] = alpha * pe(offset + p, :) (or of offset + positions[p])."""
    keywords = _keywords(**keywords)
    check_fill_table(out, offset, keywords)
    # A table is the add with x = 0 along (num_positions,) positions.
    zeros = torch.zeros_like(out)
    dim, ids, _ = check_add_pe(zeros, None, offset, 1.0, 0, keywords, None, NEW)
    out.copy_(_add_pe_values(zeros, None, offset, 1.0, 0, keywords, ids, dim))


def _keywords(base: float = 10000.0, layout: str = "interleaved", frequencies: str = "paper",
              min_timescale: float = 1.0, max_timescale: float = 10000.0, precise_angle: bool = False,
              positions: Tensor | None = None, padding_idx: int = -1, alpha: Tensor | None = None,
              dropout: float = 0.0, seed: int = 0) -> dict:
    """The keywords with their defaults filled in."""
    return dict(base=base, layout=layout, frequencies=frequencies, min_timescale=min_timescale,
                max_timescale=max_timescale, precise_angle=precise_angle, positions=positions,
                padding_idx=padding_idx, alpha=alpha, dropout=dropout, seed=seed)
