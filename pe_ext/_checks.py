"""Argument checks every op family shares: the Python twins of csrc/common/checks.cpp, with the same exception
types and messages, so that the fallback refuses exactly what the compiled ops refuse; and the checks of the layers'
constructor arguments."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT64_MAX = 2**63 - 1


def check_supported_dtype(t: Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pe_ext: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def has_distinct_elements(t: Tensor) -> bool:
    """Whether t's elements provably lie at distinct addresses: with its dimensions of size > 1 sorted by stride,
    each stride steps past everything the smaller ones reach."""
    if t.numel() == 0:
        return True
    reach = 0  # the largest element offset the smaller dimensions reach
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


def check_distinct_elements(t: Tensor, name: str) -> None:
    if not has_distinct_elements(t):
        raise ValueError(
            f"pe_ext: {name} has elements that share memory (an expanded or overlapping view); it cannot be "
            f"written to. Pass a tensor with distinct elements, e.g. {name}.contiguous()"
        )


def _share_memory(a: Tensor, b: Tensor) -> bool:
    """Whether the address ranges a and b span in one storage intersect (conservative)."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t):
        start = t.data_ptr()
        return start, start + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def has_visible_memory(*tensors: Tensor | None) -> bool:
    """Whether the tensors' addresses can be read: not meta or fake tensors (torch.compile's), nor functorch's
    wrappers (vmap, grad), which hide their storage."""
    from torch._subclasses.fake_tensor import is_fake  # torch.compile's machinery, imported when first needed

    return not any(t is not None and (t.is_meta or is_fake(t) or torch._C._functorch.is_functorch_wrapped_tensor(t))
                   for t in tensors)


def check_no_shared_memory(written: Tensor, name: str, read: Tensor, read_name: str) -> None:
    if _share_memory(written, read):
        raise ValueError(f"pe_ext: {name}'s memory overlaps {read_name}'s, which the op still reads while writing "
                         f"{name}; pass a separate tensor (e.g. {read_name}.clone())")


def _tracked(t: Tensor | None) -> bool:
    if t is None:
        return False
    return (t.requires_grad and torch.is_grad_enabled()) or torch.autograd.forward_ad.unpack_dual(t).tangent is not None


def check_untracked_out(tensors: dict[str, Tensor | None], op: str) -> None:
    """out= forms have no autograd formula: refuse tensors autograd tracks, as torch's out= ops do (the twin of
    csrc/common/autograd.cpp's refuse_tracked_out)."""
    for name, t in tensors.items():
        if _tracked(t):
            raise RuntimeError(f"pe_ext: {name} requires grad, but {op} (out=) has no autograd formula, as torch's "
                               "out= forms have none; call the op without out=, or run under torch.no_grad()")


def check_writable(t: Tensor, name: str) -> None:
    """Inference tensors can be written only inside inference mode (checked before writing, unlike torch's ops)."""
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"pe_ext: {name} is an inference tensor (made under torch.inference_mode()), which can be "
                           "written only inside inference mode; write into a clone, or call under "
                           "torch.inference_mode()")


def check_offset(offset: int, count: int) -> None:
    if offset < 0:
        raise ValueError(f"pe_ext: offset must be >= 0, got {offset}")
    check_offset_fits(offset, count)


def check_offset_fits(offset: int, count: int) -> None:
    """offset + count fits in int64; offset may be negative (positions computed on the fly)."""
    if offset > 0 and offset > INT64_MAX - count:  # offset 0 first: no guard on a symbolic count when tracing
        raise ValueError(f"pe_ext: offset ({offset}) + seq_len ({count}) overflows int64")


def check_same_device(t: Tensor, name: str, like: Tensor, like_name: str) -> None:
    if t.device != like.device:
        raise ValueError(f"pe_ext: {name} is on {t.device} but {like_name} is on {like.device}")


# Constructor arguments, checked where they are given: a TypeError for the wrong kind of value, a ValueError for one
# out of range, each naming the argument and what was expected (`hint` adds a remedy).


def check_int(value, name: str, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"pe_ext: {name} must be an int, got {value!r} ({type(value).__name__}){hint}")
    if value < minimum:
        raise ValueError(f"pe_ext: {name} must be an int >= {minimum}, got {value}{hint}")


def check_number(value, name: str, hint: str = "", finite: bool = True) -> None:
    """A real number (a Python or numpy scalar, not a tensor, whose gradient would be lost), finite if asked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a Tensor" if isinstance(value, Tensor) else f"{value!r} ({type(value).__name__})"
        raise TypeError(f"pe_ext: {name} must be a number, got {kind}{hint}")
    if finite and not math.isfinite(value):
        raise ValueError(f"pe_ext: {name} must be finite, got {value}{hint}")


def check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"pe_ext: {name} must be True or False, got {value!r} ({type(value).__name__})")


def check_keywords(keywords: dict, allowed, caller: str) -> None:
    """Only the documented keywords: a typo is a TypeError naming it."""
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"pe_ext: {caller} got unexpected keyword argument(s) {unknown}; its keywords beyond the "
                        f"named ones are {sorted(allowed)}")
