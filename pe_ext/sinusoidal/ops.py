"""The sinusoidal family's public functions: typed wrappers over torch.ops.pe_ext.*, the family's registration (its
schemas and fallback kernels), and the ops' fake (meta) kernels.

Every function takes the encoding keywords of the ops (csrc/sinusoidal/ops.h):
    base=10000.0             frequencies="paper": div_term = exp(arange(0, d_model, 2) * -(log(base) / d_model))
    frequencies="paper"      or "timescales": periods from min_timescale to max_timescale (fairseq, tensor2tensor),
                             or a 1-D float tensor of the frequencies (a model's own div_term or inv_freq, used as
                             given; the ops' inv_freq)
    min_timescale=1.0, max_timescale=10000.0
    frequency_rounding="float32"  the formula evaluated in float32 as PyTorch evaluates it, so that the values equal
                             the classic module's; "correct": evaluated in float64 and rounded once
    layout="interleaved"     (sin, cos, sin, cos, ...), "concatenated" (all sin, then all cos; an odd d_model's
                             last column is 0) or "concatenated_cos_first" (all cos, then all sin)
    precise_angle=False      form and reduce the angle in double (with float64 frequencies) before the float32
                             sin/cos: under 1e-6 error at any position, where the classic float32 angle loses ~1e-2 by
                             position 300k
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from .._checks import INT64_MAX, SUPPORTED_DTYPES, capturing_cuda_graph, check_keywords
from .._onnx import capturing_for_export
from . import checks, fallback, schema

_backend.register_family("sinusoidal",
                         _backend.Family(schema.SCHEMAS, fallback.KERNELS, composite=set(fallback.KERNELS)))
_ADD_PE, _EAGER_ADD_PE = torch.ops.pe_ext.add_pe.default, _backend.eager_op("add_pe")


def _seq_dim(x: Tensor, batch_first: bool) -> int:
    return 1 if x.dim() == 3 and batch_first else 0


def _checked_offset(offset: int) -> int:
    # The ops take an int64; outside it torch's argument parser would refuse the call without saying why.
    if isinstance(offset, int) and not -(2**63) <= offset <= INT64_MAX:
        raise ValueError(f"pe_ext: offset must fit in int64, got {offset}")
    return offset


def op_encoding(encoding: dict) -> dict:
    """The ops' encoding keywords: frequencies given as a tensor (a model's own div_term or inv_freq) is the ops'
    inv_freq."""
    if not encoding:  # the common case, first: decoding calls are overhead-bound
        return encoding
    frequencies = encoding.get("frequencies")
    if not isinstance(frequencies, Tensor):
        return encoding
    if "inv_freq" in encoding:
        raise ValueError("pe_ext: give the frequencies as frequencies=tensor or inv_freq=tensor, not both")
    return {**{k: v for k, v in encoding.items() if k != "frequencies"}, "inv_freq": frequencies}


def checked_encoding(encoding: dict, caller: str) -> dict:
    """The encoding keywords (schema.ENCODING), any other name being a TypeError that names it."""
    if encoding:
        check_keywords(encoding, schema.ENCODING, caller)
    return encoding


def check_table_args(num_positions: int, d_model: int) -> None:
    """A table's sizes, checked where they are given (PositionalEncoding checks them even without a table)."""
    if num_positions < 0:
        raise ValueError(f"pe_ext: num_positions (max_len) must be >= 0, got {num_positions}")
    if d_model <= 0:
        raise ValueError(f"pe_ext: d_model must be > 0, got {d_model}")


def _position_keywords(x: Tensor, seq_dim: int, alpha: float | Tensor, positions: Tensor | None,
                       start_positions: Tensor | None, padding_idx: int) -> dict:
    """The ops' positions / padding_idx / alpha keywords from the wrappers' friendlier forms."""
    if start_positions is not None:
        if positions is not None:
            raise ValueError("pe_ext: give positions or start_positions, not both")
        batch_dim = 1 - seq_dim
        if x.dim() != 3 or start_positions.shape != (x.shape[batch_dim],):
            raise ValueError(f"pe_ext: start_positions must have shape (batch,) for a 3-D x; x has shape "
                             f"{list(x.shape)}, start_positions {list(start_positions.shape)}")
        steps = torch.arange(x.shape[seq_dim], device=start_positions.device, dtype=start_positions.dtype)
        positions = start_positions[:, None] + steps[None, :]  # (batch, seq_len)
        positions = positions if seq_dim == 1 else positions.t()
    # Only what differs from the schema's defaults: each keyword given to a torch.ops call costs ~0.3 us to parse.
    keywords = {}
    if positions is not None:
        keywords["positions"] = positions
    if padding_idx != -1:
        keywords["padding_idx"] = padding_idx
    if isinstance(alpha, Tensor):
        keywords["alpha"] = alpha
    elif alpha != 1.0:
        keywords["alpha"] = torch.tensor(alpha, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                                         device=x.device)
    return keywords


def _dropout_keywords(x: Tensor, dropout: float, generator: torch.Generator | None) -> dict:
    """The ops' dropout keywords, with a fresh seed: a tensor drawn by torch.randint, which torch.compile and
    torch.export trace into the graph (each call of the compiled or exported graph draws its own), never read in
    Python. It comes from torch's CPU generator whatever x's device, so that the same torch.manual_seed gives the same
    mask on CPU and on CUDA; from `generator`, on its device, when given; and from x's CUDA generator while a CUDA
    graph is being captured, so that each replay draws a new seed (the kernel reads it from device memory)."""
    if dropout == 0:
        return {}
    device = "cpu" if generator is None else generator.device
    if generator is None and capturing_cuda_graph(x):
        device = x.device
    # No generator= unless one is given: graphs then hold aten.randint.low, which the ONNX exporters know (and
    # reach pe_ext's translation, which refuses dropout clearly).
    chosen = {} if generator is None else {"generator": generator}
    return {"dropout": dropout, "seed": torch.randint(0, 2**63 - 1, (), device=device, **chosen)}


def _add_pe(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, keywords: dict) -> Tensor:
    """torch.ops.pe_ext.add_pe.default(x, table, offset, scale, seq_dim, **keywords): eager calls through the
    extension's direct caller (_backend.eager_op), ~1.5 us faster than torch.ops."""
    if _EAGER_ADD_PE is not None and _backend.eager_call_allowed((x, table, *keywords.values())):
        return _EAGER_ADD_PE(x, table, offset, scale, seq_dim, **keywords)
    return _ADD_PE(x, table, offset, scale, seq_dim, **keywords)


def add_pe_plain(x: Tensor, table: Tensor | None, offset: int, scale: float, seq_dim: int, encoding: dict) -> Tensor:
    """x * scale + pe, in the ops' terms (encoding as op_encoding gives it): for a layer whose arguments were checked
    when it was built, on calls without positions, alpha or dropout. Inference and decoding calls are overhead-bound:
    this skips the public wrapper's keyword handling (~1 us). The layer's scale is checked again: a learnable one
    assigned after construction would lose its gradient."""
    return _add_pe(x, table, _checked_call(offset, scale, {}, "PositionalEncoding"), scale, seq_dim, encoding)


def _checked_call(offset: int, scale: float, encoding: dict, caller: str) -> int:
    """The checks the ops cannot make (in one function: decoding calls are overhead-bound); returns offset."""
    # torch's argument parser would turn a 0-dim tensor into a float, silently dropping its gradient.
    if isinstance(scale, Tensor):
        raise TypeError("pe_ext: scale must be a number, got a Tensor (a tensor's gradient would be lost); for a "
                        "learnable factor on pe pass alpha=, and multiply x by a learnable factor yourself")
    if encoding:
        checked_encoding(encoding, caller)
    if isinstance(offset, int) and not -(2**63) <= offset <= INT64_MAX:  # as _checked_offset, inlined
        raise ValueError(f"pe_ext: offset must fit in int64, got {offset}")
    return offset


def add_sinusoidal_pe(x: Tensor, table: Tensor | None = None, *, offset: int = 0, scale: float = 1.0,
                      alpha: float | Tensor = 1.0, positions: Tensor | None = None,
                      start_positions: Tensor | None = None, padding_idx: int = -1, dropout: float = 0.0,
                      generator: torch.Generator | None = None, batch_first: bool = True,
                      out: Tensor | None = None, **encoding) -> Tensor:
    """x * scale + alpha * pe(position) for every element of x, in one pass; the result keeps x's dtype.

    x is (batch, seq_len, d_model) when batch_first, (seq_len, batch, d_model) otherwise, or (seq_len, d_model).
    Positions are offset + l along the sequence, or offset + positions (ids shaped like x without d_model, or
    (seq_len,): int, or float for fractional positions such as diffusion timesteps), or offset + start_positions[b]
    + l (start_positions: (batch,), e.g. left-padded batches or a KV cache); pe(padding_idx) is zero. Offsets and
    positions may be negative where pe is computed on the fly (Transformer-XL's relative positions). alpha is a number or a 0-dim tensor, learnable (its gradient is computed).
    dropout > 0 zeroes each element of the sum with that probability in the same pass (a Philox mask seeded from
    torch's generator; backward regenerates it), as nn.Dropout in training mode would.
    pe rows are read from `table` ((rows, d_model) or the module's (1, rows, d_model); float32 or x's dtype;
    integer positions from 0) when given, else computed on the fly with no length limit. `out`, if given, is written
    and returned (no autograd, as with torch's out= arguments).
    """
    seq_dim, offset = _seq_dim(x, batch_first), _checked_call(offset, scale, encoding, "add_sinusoidal_pe()")
    keywords = {**_position_keywords(x, seq_dim, alpha, positions, start_positions, padding_idx),
                **_dropout_keywords(x, dropout, generator), **op_encoding(encoding)}
    if out is None:
        return _add_pe(x, table, offset, scale, seq_dim, keywords)
    torch.ops.pe_ext.add_pe_out.default(x, table, offset, scale, seq_dim, out, **keywords)
    return out


def add_sinusoidal_pe_(x: Tensor, table: Tensor | None = None, *, offset: int = 0, scale: float = 1.0,
                       alpha: float | Tensor = 1.0, positions: Tensor | None = None,
                       start_positions: Tensor | None = None, padding_idx: int = -1, batch_first: bool = True,
                       **encoding) -> Tensor:
    """add_sinusoidal_pe written into x, which is returned. Autograd records it as torch records its own in-place
    ops (a leaf that requires grad is refused, tensors saved for backward are checked)."""
    seq_dim = _seq_dim(x, batch_first)
    offset = _checked_call(offset, scale, encoding, "add_sinusoidal_pe_()")
    keywords = {**_position_keywords(x, seq_dim, alpha, positions, start_positions, padding_idx),
                **op_encoding(encoding)}
    if capturing_for_export():
        return x.copy_(torch.ops.pe_ext.add_pe.default(x, table, offset, scale, seq_dim, **keywords))
    torch.ops.pe_ext.add_pe_.default(x, table, offset, scale, seq_dim, **keywords)
    return x


def sinusoidal_table(num_positions: int, d_model: int, *, offset: int = 0, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None, **encoding) -> Tensor:
    """The (num_positions, d_model) table of pe(offset + p, :), built by a kernel on `device`."""
    check_table_args(num_positions, d_model)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    encoding = op_encoding(checked_encoding(encoding, "sinusoidal_table()"))
    if capturing_for_export():  # pe added to zeros (a static width, which the ONNX translation needs)
        zeros = torch.zeros(num_positions, 1, dtype=dtype, device=device).expand(-1, d_model)
        return torch.ops.pe_ext.add_pe.default(zeros, None, _checked_offset(offset), 1.0, 0, **encoding)
    out = torch.empty(num_positions, d_model, dtype=dtype, device=device)
    torch.ops.pe_ext.fill_table_.default(out, _checked_offset(offset), **encoding)
    return out


def sinusoidal_embedding(positions: Tensor, d_model: int, *, offset: int = 0, padding_idx: int = -1,
                         dtype: torch.dtype = torch.float32, **encoding) -> Tensor:
    """pe(offset + positions) with shape positions.shape + (d_model,), and zeros where the position is padding_idx:
    the embedding that fairseq's and Hugging Face's sinusoidal position modules return, built in one kernel."""
    if d_model <= 0:
        raise ValueError(f"pe_ext: d_model must be > 0, got {d_model}")
    encoding = op_encoding(checked_encoding(encoding, "sinusoidal_embedding()"))
    flat = positions.reshape(-1)
    if capturing_for_export():  # pe added to zeros shaped from the positions (a dynamic length stays dynamic)
        zeros = torch.zeros_like(flat, dtype=dtype).unsqueeze(1).expand(-1, d_model)
        out = torch.ops.pe_ext.add_pe.default(zeros, None, _checked_offset(offset), 1.0, 0, positions=flat,
                                              padding_idx=padding_idx, **encoding)
    else:
        out = torch.empty(positions.numel(), d_model, dtype=dtype, device=positions.device)
        torch.ops.pe_ext.fill_table_.default(out, _checked_offset(offset), positions=flat, padding_idx=padding_idx,
                                             **encoding)
    return out.reshape(*positions.shape, d_model)


def make_positions(tokens: Tensor, padding_idx: int) -> Tensor:
    """fairseq's make_positions: non-padding tokens get padding_idx + 1, + 2, ... along each row; padding tokens
    get padding_idx (whose embedding is zero)."""
    mask = tokens.ne(padding_idx).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx


# The fake kernels serve torch.compile and meta tensors (and calls mixing them with real ones, which dispatch here):
# they run the ops' checks, all but those that read addresses or values. The fallback's ops are composites of torch
# ops, which bring their own.
if _backend.has_extension():
    @torch.library.register_fake("pe_ext::add_pe")
    def _add_pe_fake(x, table=None, offset=0, scale=1.0, seq_dim=1, **options):
        checks.check_add_pe(x, table, offset, scale, seq_dim, schema.with_defaults(**options), None, checks.NEW,
                            has_storage=False)
        return torch.empty_like(x)

    @torch.library.register_fake("pe_ext::add_pe_")
    def _add_pe_inplace_fake(x, table=None, offset=0, scale=1.0, seq_dim=1, **options):
        checks.check_add_pe(x, table, offset, scale, seq_dim, schema.with_defaults(**options), None, checks.IN_PLACE,
                            has_storage=False)

    @torch.library.register_fake("pe_ext::add_pe_out")
    def _add_pe_out_fake(x, table, offset, scale, seq_dim, out, **options):
        checks.check_add_pe(x, table, offset, scale, seq_dim, schema.with_defaults(**options), out, checks.OUT,
                            has_storage=False)

    @torch.library.register_fake("pe_ext::fill_table_")
    def _fill_table_fake(out, offset=0, **options):
        checks.check_fill_table(out, offset, schema.with_defaults(**options), has_storage=False)
