"""add_pe in standard ONNX ops, for both torch.onnx exporters (pe_ext/_onnx.py adapts and registers it). What each
mode exports, the math in float32 (float64 for float64 x) as the kernels do it, then one Cast to x's dtype:

    table given        Gather of its rows (the table is the model's buffer: an initializer), at offset + l or at
                       offset + positions
    computed           Sin and Cos of float32(position) * frequency; the frequencies are a constant computed by pe_ext
                       when the graph is built, exactly the kernels' values (frequency_rounding="float32": as torch
                       evaluates the formula in float32), or the model's inv_freq tensor, rounded to float32 as given
    precise_angle      the angle formed and reduced modulo 2*pi with float64 ops (Mul, Round, Sub), as math.h does it
                       (but without its fused multiply-adds), then Cast to float32 before Sin and Cos
    positions          int ids (Gather or Sin/Cos at offset + id) or fractional ones (float64, then float32)
    padding_idx, alpha Where(position == padding_idx, 0, pe), then pe * alpha
    dropout > 0        refused: its masks come from pe_ext's Philox stream, which ONNX has no op for; export the
                       model in eval mode
The sequence length is read from x's shape in the graph (dynamic); d_model must be static. The ops that write their
arguments (add_pe_, add_pe_out, fill_table_) have no translation: ONNX graphs hold no writes, and pe_ext's functions
call add_pe instead while a graph is captured for export (ops.py).
"""

from __future__ import annotations

import torch

from .._onnx import OnnxGraph, axes, cast, reduced_angle, register_translation
from . import ops, reference  # noqa: F401  (ops registers the ops translated here: torch.onnx may be loaded already)
from .schema import ENCODING


def _positions(g: OnnxGraph, x, dim: int, offset, positions):
    """offset + the positions along x's dimension dim, shaped (seq_len,) or like x without d_model; int64, or float64
    when fractional."""
    if positions is None:
        length = g.op("Gather", g.op("Shape", x), g.constant(dim, torch.int64))
        return g.op("Range", offset, g.op("Add", offset, length), g.constant(1, torch.int64)), torch.int64
    if g.dtype(positions).is_floating_point:
        as_double = cast(g, positions, g.dtype(positions), torch.float64)
        return g.op("Add", as_double, cast(g, offset, torch.int64, torch.float64)), torch.float64
    return g.op("Add", cast(g, positions, g.dtype(positions), torch.int64), offset), torch.int64


def _frequencies(g: OnnxGraph, d_model: int, options: dict, angle_dtype: torch.dtype):
    """The frequencies, in the angle's dtype: the caller's inv_freq (rounded to float32 first for a float32 angle),
    else the values the kernels use, computed now by the reference (torch's own CPU ops, as frequencies.cpp)."""
    given = options["inv_freq"]
    if given is not None:
        return cast(g, given, g.dtype(given), angle_dtype)
    values = reference.frequencies(d_model, {k: options[k] for k in ENCODING}, angle_dtype == torch.float64)
    return g.constant(values.numpy(), angle_dtype)


def _angles(g: OnnxGraph, ids, ids_dtype: torch.dtype, d_model: int, acc: torch.dtype, options: dict):
    """angle[..., i] = position * freq[i] in acc, shaped ids.shape + (num_freqs,)."""
    precise = options["precise_angle"] and acc != torch.float64  # float64 math needs no help
    angle_dtype = torch.float64 if precise else acc
    freqs = _frequencies(g, d_model, options, angle_dtype)
    column = g.op("Unsqueeze", cast(g, ids, ids_dtype, angle_dtype), axes(g, -1))
    angle = g.op("Mul", column, freqs)
    if not precise:
        return angle
    return reduced_angle(g, angle, acc)


def _computed_rows(g: OnnxGraph, ids, ids_dtype: torch.dtype, d_model: int, acc: torch.dtype, options: dict):
    """pe(ids, :) computed, in the layout's column order (reference.pe_rows)."""
    angle = _angles(g, ids, ids_dtype, d_model, acc, options)
    sin, cos = g.op("Sin", angle), g.op("Cos", angle)
    leading = g.op("Shape", ids)
    if options["layout"] == "interleaved":
        pairs = g.op("Concat", g.op("Unsqueeze", sin, axes(g, -1)), g.op("Unsqueeze", cos, axes(g, -1)), axis=-1)
        width = 2 * reference.num_frequencies(d_model, "interleaved")
        rows = g.op("Reshape", pairs, g.op("Concat", leading, axes(g, width), axis=0))
        # An odd d_model's last frequency has a sin column only.
        return rows if width == d_model else g.op("Slice", rows, axes(g, 0), axes(g, d_model), axes(g, -1))
    parts = [sin, cos] if options["layout"] == "concatenated" else [cos, sin]
    if d_model % 2:  # an odd d_model's last column is zero
        zero = torch.zeros(1, dtype=acc).numpy()
        parts.append(g.op("ConstantOfShape", g.op("Concat", leading, axes(g, 1), axis=0), value=zero))
    return g.op("Concat", *parts, axis=-1)


def _pe_rows(g: OnnxGraph, ids, ids_dtype: torch.dtype, table, d_model: int, acc: torch.dtype, options: dict):
    """alpha * pe(ids, :) in acc, shaped ids.shape + (d_model,), zero where the position is padding_idx."""
    if table is not None:
        rows = table if g.rank(table) == 2 else g.op("Squeeze", table, axes(g, 0))
        pe = cast(g, g.op("Gather", rows, ids, axis=0), g.dtype(table), acc)
    else:
        pe = _computed_rows(g, ids, ids_dtype, d_model, acc, options)
    if options["padding_idx"] >= 0:
        padding = g.op("Equal", ids, g.constant(options["padding_idx"], ids_dtype))
        pe = g.op("Where", g.op("Unsqueeze", padding, axes(g, -1)), g.constant(0.0, acc), pe)
    alpha = options["alpha"]
    if alpha is not None:
        scalar = g.op("Reshape", alpha, g.constant([], torch.int64))
        pe = g.op("Mul", pe, cast(g, scalar, g.dtype(alpha), acc))
    return pe


def _refuse_dropout(dropout: float) -> None:
    if dropout > 0:
        raise ValueError(f"pe_ext: dropout (p={dropout}) cannot be exported to ONNX: its masks come from pe_ext's "
                         "own random stream, which no ONNX op reproduces. Export the model in eval mode "
                         "(model.eval(); the TorchScript-based exporter's default training=TrainingMode.EVAL does "
                         "so), as ONNX graphs serve inference")


def add_pe(g: OnnxGraph, x, table, offset, scale: float, seq_dim: int, **options):
    """out = x * scale + alpha * pe(position), along x's dimension seq_dim."""
    _refuse_dropout(options["dropout"])
    rank, d_model, x_dtype = g.rank(x), g.width(x), g.dtype(x)
    if d_model is None:
        raise ValueError("pe_ext: ONNX export needs x's last dimension (d_model) to be static; mark only the batch "
                         "and sequence dimensions dynamic")
    dim, acc = seq_dim % rank, reference.acc_dtype(x_dtype)
    ids, ids_dtype = _positions(g, x, dim, offset, options["positions"])
    pe = _pe_rows(g, ids, ids_dtype, table, d_model, acc, options)
    shared = options["positions"] is None or g.rank(options["positions"]) == 1  # (seq_len,) positions
    if shared and rank == 3 and dim == 0:
        pe = g.op("Unsqueeze", pe, axes(g, 1))  # (seq_len, 1, d_model) against (seq_len, batch, d_model)
    scaled = cast(g, x, x_dtype, acc)
    if scale != 1.0:
        scaled = g.op("Mul", scaled, g.constant(scale, acc))
    return cast(g, g.op("Add", scaled, pe), acc, x_dtype)


register_translation("add_pe", add_pe)
