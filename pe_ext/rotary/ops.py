"""The rotary family's public function: a typed wrapper over torch.ops.pe_ext.rotary / rotary_, the family's
registration (its schemas and fallback kernels), and the ops' fake (meta) kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from .._checks import INT64_MAX
from .._onnx import capturing_for_export
from . import checks, fallback, schema

_backend.register_family("rotary", _backend.Family(schema.SCHEMAS, fallback.KERNELS, composite=set(fallback.KERNELS)))


def _is_default(name: str, value) -> bool:
    default = schema.DEFAULTS[name]
    return value is None if default is None else type(value) is type(default) and value == default


def apply_rotary(q: Tensor, k: Tensor | None = None, *, positions: Tensor | None = None, offset: int = 0,
                 base: float = 10000.0, inv_freq: Tensor | None = None, rotary_dim: int | None = None,
                 style: str = "neox", attention_scaling: float = 1.0, precise_angle: bool = False,
                 cu_seqlens: Tensor | None = None, inplace: bool = False, layout: str | None = None,
                 cos: Tensor | None = None, sin: Tensor | None = None):
    """Rotary position embedding of q (and k, in the same launch): returns q rotated, or (q, k) when k is given.

    Layouts: q of shape (batch, heads, seq, head_dim) (Hugging Face, layout="bhsd", the default for 4-D q),
    (batch, seq, heads, head_dim) (flash-attn, layout="bshd"), or packed (total_tokens, heads, head_dim)
    (layout="thd", the default for 3-D q). k may have fewer heads (GQA, MQA); any strides.

    Positions: offset + the index along the sequence, or offset + positions ((seq,) shared by the batch, (batch, seq),
    or (total_tokens,) packed), or for packed sequences the index within each sequence (cu_seqlens: (num_seqs + 1,)
    cumulative lengths). Tensors, so that CUDA graphs replay them.

    Angles: position * inv_freq(i) as the float32 product Hugging Face forms (inv_freq: `base`'s default frequencies,
    bitwise HF's, or an explicit tensor of rotary_dim / 2), or with precise_angle=True formed and reduced in double
    (error under 1e-6 at positions in the millions). cos and sin are multiplied by attention_scaling. With cos and sin
    tables ((rows, rotary_dim) or (batch or 1, rows, rotary_dim), row = position) they are read instead.

    style="neox" rotates pairs (i, i + rotary_dim / 2) (rotate_half: Llama, Qwen, Mistral); "gptj" pairs (2i, 2i + 1).
    Columns from rotary_dim (default head_dim) on pass through. Math in float32 (float64 for float64), rounded once to
    q's dtype. inplace=True writes q and k (autograd records it as torch records its own in-place ops) and returns
    them.
    """
    if layout is None:
        layout = "thd" if q.dim() == 3 else "bhsd"
    if isinstance(offset, int) and not -(2**63) <= offset <= INT64_MAX:
        raise ValueError(f"pe_ext: offset must be >= 0 and fit in int64, got {offset}")
    given = {"positions": positions, "offset": offset, "base": base, "inv_freq": inv_freq, "rotary_dim": rotary_dim,
             "style": style, "attention_scaling": attention_scaling, "precise_angle": precise_angle,
             "cu_seqlens": cu_seqlens, "cos": cos, "sin": sin, "layout": layout}
    # Only what differs from the schema's defaults: each keyword given to a torch.ops call costs time to parse.
    keywords = {name: value for name, value in given.items() if not _is_default(name, value)}
    if inplace and capturing_for_export():  # the functional op, copied in: exporters translate no writes
        q_out, k_out = torch.ops.pe_ext.rotary.default(q, k, **keywords)
        q.copy_(q_out)
        return q if k is None else (q, k.copy_(k_out))
    if inplace:
        torch.ops.pe_ext.rotary_.default(q, k, **keywords)
        return q if k is None else (q, k)
    q_out, k_out = torch.ops.pe_ext.rotary.default(q, k, **keywords)
    return q_out if k is None else (q_out, k_out)


# The fake kernels serve torch.compile and meta tensors (and calls mixing them with real ones, which dispatch here):
# they run the ops' checks, all but those that read addresses or values.
if _backend.has_extension():  # the fallback's ops are composites of torch ops, which bring their own
    @torch.library.register_fake("pe_ext::rotary")
    def _rotary_fake(q, k=None, **options):
        checks.check_rotary(q, k, schema.with_defaults(**options), in_place=False, has_storage=False)
        return torch.empty_like(q), q.new_empty(0) if k is None else torch.empty_like(k)

    @torch.library.register_fake("pe_ext::rotary_")
    def _rotary_inplace_fake(q, k=None, **options):
        checks.check_rotary(q, k, schema.with_defaults(**options), in_place=True, has_storage=False)
