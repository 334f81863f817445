"""The rotary ops in pure PyTorch, with the schemas' signatures (schema.py): each checks its arguments as the C++ ops
do (checks.py), then computes with the readable reference (reference.py). They serve torch.ops.pe_ext.* where the
compiled extension is missing (or was built without CUDA)."""

from __future__ import annotations

from torch import Tensor

from . import checks, reference
from .schema import with_defaults


def _layout_of(canonical: Tensor, layout: str) -> Tensor:
    """A [batch, seq, heads, head_dim] result back in the caller's layout."""
    return canonical.transpose(1, 2) if layout == "bhsd" else canonical if layout == "bshd" else canonical[0]


def rotary(q: Tensor, k: Tensor | None = None, **options) -> tuple[Tensor, Tensor]:
    """(q', k'): every head of each token rotated by its position's angles; k' is empty when k is None."""
    options = with_defaults(**options)
    problem = checks.check_rotary(q, k, options, in_place=False)
    q_out, k_out = reference.rotary_values(problem)
    layout = options["layout"]
    return _layout_of(q_out, layout), q.new_empty(0) if k_out is None else _layout_of(k_out, layout)


def rotary_(q: Tensor, k: Tensor | None = None, **options) -> None:
    """rotary written into q and k."""
    options = with_defaults(**options)
    problem = checks.check_rotary(q, k, options, in_place=True)
    q_out, k_out = reference.rotary_values(problem)
    layout = options["layout"]
    q.copy_(_layout_of(q_out, layout))  # into q itself, not a view of it: torch's in-place rules see q
    if k is not None:
        k.copy_(_layout_of(k_out, layout))


KERNELS = {"rotary": rotary, "rotary_": rotary_}
