"""rotary in standard ONNX ops, for both torch.onnx exporters (pe_ext/_onnx.py adapts and registers it). The math is
reference.py's: float32 (float64 for float64 q), each of q and k cast to it once, rotated, and cast back once.

    positions          offset + the index along the sequence (Range, from q's shape: dynamic), offset + the given
                       positions ((seq,) or (batch, seq)), or for packed tokens with cu_seqlens the index within each
                       sequence (the last start at or before the token, counted with LessOrEqual and ReduceSum)
    computed angles    float32(position) * inv_freq, then Cos and Sin, times attention_scaling; inv_freq is a
                       constant computed by pe_ext when the graph is built (reference.default_inv_freq: the kernels'
                       values, bitwise Hugging Face's) or the model's own buffer, cast to the math dtype as given
    precise_angle      the angle formed and reduced modulo 2*pi with float64 ops, then cast to float32
    cos and sin tables Gather of their rows at the positions (GatherND per batch row for (batch, rows, rotary_dim)
                       tables): Hugging Face's apply_rotary_pos_emb
    style              neox: halves Sliced and Concatenated; gptj: even and odd columns Sliced with step 2 and
                       interleaved back (Unsqueeze, Concat, Reshape); columns from rotary_dim on pass through
    layouts            bhsd, bshd and packed thd; k may have fewer heads (GQA), as the coefficients broadcast over heads
The sequence length is read from q's shape in the graph (dynamic); head_dim must be static. rotary_ (the op that
writes q and k) has no translation: ONNX graphs hold no writes, and apply_rotary calls rotary instead while a graph is
captured for export (ops.py).
"""

from __future__ import annotations

import torch

from .._onnx import OnnxGraph, axes, cast, reduced_angle, register_translation
from . import ops, reference  # noqa: F401  (ops registers the op translated here: torch.onnx may be loaded already)

_SEQ_DIM = {"bhsd": 2, "bshd": 1, "thd": 0}


def _dim(g: OnnxGraph, value, dim: int):
    """value's size along dim, as a 1-element int64 tensor."""
    return g.op("Gather", g.op("Shape", value), axes(g, dim))


def _token_positions(g: OnnxGraph, q, layout: str, offset, positions, cu_seqlens):
    """offset + each token's position, int64: (seq,) shared by the batch, or (batch, seq) as positions gives them."""
    if positions is not None:
        return g.op("Add", cast(g, positions, g.dtype(positions), torch.int64), offset)
    length = g.op("Squeeze", _dim(g, q, _SEQ_DIM[layout]), axes(g, 0))
    index = g.op("Range", g.constant(0, torch.int64), length, g.constant(1, torch.int64))
    if cu_seqlens is not None:  # the index within the last sequence starting at or before each token
        starts = g.op("Slice", cast(g, cu_seqlens, g.dtype(cu_seqlens), torch.int64), axes(g, 0), axes(g, -1),
                      axes(g, 0))
        started = g.op("LessOrEqual", g.op("Unsqueeze", starts, axes(g, 0)), g.op("Unsqueeze", index, axes(g, 1)))
        count = g.op("ReduceSum", cast(g, started, torch.bool, torch.int64), axes(g, 1), keepdims=0)
        sequence = g.op("Max", g.op("Sub", count, g.constant(1, torch.int64)), g.constant(0, torch.int64))
        index = g.op("Sub", index, g.op("Gather", starts, sequence, axis=0))
    return g.op("Add", index, offset)


def _table_rows(g: OnnxGraph, table, ids, q, layout: str, acc: torch.dtype):
    """table[b, ids[b, l], :] (or table[ids] for a 2-D table) in acc."""
    dtype = g.dtype(table)
    if g.rank(table) == 3 and layout == "thd":  # packed tokens are one batch row: the table's first dim is 1
        table = g.op("Squeeze", table, axes(g, 0))
    if g.rank(table) == 2:
        rows = g.op("Gather", table, ids, axis=0)
    else:  # (batch or 1, rows, rotary_dim): both table and positions expanded to q's batch, rows gathered per row
        batch = _dim(g, q, 0)
        table = g.op("Expand", table, g.op("Concat", batch, axes(g, 1, 1), axis=0))
        ids = g.op("Expand", ids, g.op("Concat", batch, _dim(g, q, _SEQ_DIM[layout]), axis=0))
        rows = g.op("GatherND", table, g.op("Unsqueeze", ids, axes(g, -1)), batch_dims=1)
    return cast(g, rows, dtype, acc)


def _columns(g: OnnxGraph, value, style: str, num_pairs: int):
    """The columns (a, b) of every pair, from value's last dimension: neox (i, i + n), gptj (2i, 2i + 1)."""
    if style == "neox":
        return (g.op("Slice", value, axes(g, 0), axes(g, num_pairs), axes(g, -1)),
                g.op("Slice", value, axes(g, num_pairs), axes(g, 2 * num_pairs), axes(g, -1)))
    return (g.op("Slice", value, axes(g, 0), axes(g, 2 * num_pairs), axes(g, -1), axes(g, 2)),
            g.op("Slice", value, axes(g, 1), axes(g, 2 * num_pairs), axes(g, -1), axes(g, 2)))


def _coefficients(g: OnnxGraph, q, ids, rotary_dim: int, acc: torch.dtype, options: dict):
    """(cos_a, sin_a, cos_b, sin_b), ids.shape + (rotary_dim / 2,) in acc (reference.coefficients)."""
    n = rotary_dim // 2
    if options["cos"] is not None:
        cos = _table_rows(g, options["cos"], ids, q, options["layout"], acc)
        sin = _table_rows(g, options["sin"], ids, q, options["layout"], acc)
        (cos_a, cos_b), (sin_a, sin_b) = _columns(g, cos, options["style"], n), _columns(g, sin, options["style"], n)
    else:
        given = options["inv_freq"]
        if given is None:
            freqs = g.constant(reference.default_inv_freq(options["base"], rotary_dim, acc).numpy(), acc)
        else:
            freqs = cast(g, given, g.dtype(given), acc)
        if options["precise_angle"] and acc != torch.float64:
            column = g.op("Unsqueeze", cast(g, ids, torch.int64, torch.float64), axes(g, -1))
            angle = reduced_angle(g, g.op("Mul", column, cast(g, freqs, acc, torch.float64)), acc)
        else:
            angle = g.op("Mul", g.op("Unsqueeze", cast(g, ids, torch.int64, acc), axes(g, -1)), freqs)
        cos_a = cos_b = g.op("Cos", angle)
        sin_a = sin_b = g.op("Sin", angle)
        if options["attention_scaling"] != 1.0:
            scaling = g.constant(options["attention_scaling"], acc)
            cos_a = cos_b = g.op("Mul", cos_a, scaling)
            sin_a = sin_b = g.op("Mul", sin_a, scaling)
    if options["transpose"]:
        sin_a, sin_b = g.op("Neg", sin_b), g.op("Neg", sin_a)
    return cos_a, sin_a, cos_b, sin_b


def _rotate(g: OnnxGraph, x, coefficients, rotary_dim: int, style: str, acc: torch.dtype):
    """x with its pairs rotated, in x's dtype; columns from rotary_dim on unchanged."""
    cos_a, sin_a, cos_b, sin_b = coefficients
    dtype = g.dtype(x)
    a, b = (cast(g, column, dtype, acc) for column in _columns(g, x, style, rotary_dim // 2))
    new_a = g.op("Sub", g.op("Mul", a, cos_a), g.op("Mul", b, sin_a))
    new_b = g.op("Add", g.op("Mul", b, cos_b), g.op("Mul", a, sin_b))
    if style == "neox":
        rotated = g.op("Concat", new_a, new_b, axis=-1)
    else:  # pairs interleaved back: [..., n, 2] -> [..., 2n]
        pairs = g.op("Concat", g.op("Unsqueeze", new_a, axes(g, -1)), g.op("Unsqueeze", new_b, axes(g, -1)), axis=-1)
        rotated = g.op("Reshape", pairs, axes(g, *[0] * (g.rank(x) - 1), -1))  # 0: the dim as is
    rotated = cast(g, rotated, acc, dtype)
    if rotary_dim == g.width(x):
        return rotated
    passed = g.op("Slice", x, axes(g, rotary_dim), axes(g, g.width(x)), axes(g, -1))
    return g.op("Concat", rotated, passed, axis=-1)


def _rotary_dim(g: OnnxGraph, head_dim: int, options: dict) -> int:
    for name, per_column in (("cos", 1), ("inv_freq", 2)):  # the tables' width, or two columns per frequency
        if options[name] is not None:
            if g.width(options[name]) is None:
                raise ValueError(f"pe_ext: ONNX export needs {name}'s last dimension to be static")
            return per_column * g.width(options[name])
    return head_dim if options["rotary_dim"] is None else options["rotary_dim"]


def rotary(g: OnnxGraph, q, k, offset, **options):
    """(q', k'): q and k rotated by their positions' angles; k' is an empty tensor of q's dtype when k is None."""
    head_dim = g.width(q)
    if head_dim is None:
        raise ValueError("pe_ext: ONNX export needs q's last dimension (head_dim) to be static; mark only the batch, "
                         "heads and sequence dimensions dynamic")
    layout, dtype = options["layout"], g.dtype(q)
    acc = reference.acc_dtype(dtype)
    ids = _token_positions(g, q, layout, offset, options["positions"], options["cu_seqlens"])
    rotary_dim = _rotary_dim(g, head_dim, options)
    coefficients = _coefficients(g, q, ids, rotary_dim, acc, options)
    # ids.shape + (n,) broadcast over heads: (seq, n) already does against bhsd's (batch, heads, seq, n); the
    # others gain a heads axis before n, and bhsd's (batch, seq, n) one after batch.
    positions, cos = options["positions"], options["cos"]
    per_row = (positions is not None and g.rank(positions) == 2) or (cos is not None and g.rank(cos) == 3
                                                                      and layout != "thd")
    heads_axis = 1 if layout == "bhsd" else -2
    if layout != "bhsd" or per_row:
        coefficients = tuple(g.op("Unsqueeze", c, axes(g, heads_axis)) for c in coefficients)
    q_out = _rotate(g, q, coefficients, rotary_dim, options["style"], acc)
    k_out = g.constant([], dtype) if k is None else _rotate(g, k, coefficients, rotary_dim, options["style"], acc)
    return q_out, k_out


register_translation("rotary", rotary)
