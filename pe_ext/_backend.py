"""Loads the compiled ops (pe_ext._C) or, where they are missing, registers each op family's pure-PyTorch reference
under the same names, so torch.ops.pe_ext.* always exists and every caller takes one path. backend() says which runs
where. An op family registers itself with register_family() from its own package; nothing here names an op.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch.overrides import has_torch_function

EXTENSION_CPU = "C++ extension"
EXTENSION_CUDA = "CUDA extension"
FALLBACK = "pure-PyTorch fallback"


def _load_extension():
    """The compiled module, or None and the reason it is not used."""
    if os.environ.get("PE_EXT_FORCE_FALLBACK", "0") == "1":
        return None, "PE_EXT_FORCE_FALLBACK=1"
    try:
        from . import _C
    except ImportError as error:  # not built, or built against another torch
        return None, str(error)
    return _C, None


_C, LOAD_ERROR = _load_extension()
if _C is None:
    warnings.warn(
        f"pe_ext: the compiled extension is not available ({LOAD_ERROR}); using the pure-PyTorch fallback, which is "
        "correct but not fused. Build it with `pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=2,
    )
    _fallback = torch.library.Library("pe_ext", "FRAGMENT")  # defines the ops the compiled library would
elif not _C.built_with_cuda():
    _fallback = torch.library.Library("pe_ext", "IMPL")  # adds CUDA kernels to the compiled ops


def eager_op(name: str) -> Callable | None:
    """torch.ops.pe_ext.<name>.default through the extension's direct caller (csrc/common/eager_call.cpp), or None
    without the extension. It skips torch.ops' Python-level work, ~1.5 us a call: call it only where
    eager_call_allowed()."""
    return None if _C is None else _C.eager_caller(name)


def eager_call_allowed(arguments: tuple) -> bool:
    """Whether a call with these arguments may skip torch.ops: nothing at the Python level needs to see it (no
    __torch_function__ override or mode, no torch.compile or torch.export tracing). Autograd, vmap, fake tensors,
    torch.jit.trace and CUDA graphs see the call in the dispatcher either way."""
    return not torch.compiler.is_compiling() and not has_torch_function(arguments)


@dataclass(frozen=True)
class Family:
    """An op family as the fallback sees it: its schemas and its reference kernels by op name. The ops named in
    `composite` are composites of torch ops, registered as CompositeImplicitAutograd when no compiled library is
    loaded (autograd, version counters of written tensors, meta and torch.compile then come from the ops they are
    made of)."""

    schemas: dict[str, str]
    reference_kernels: dict[str, Callable]
    composite: Collection[str] = ()


FAMILIES: dict[str, Family] = {}


def register_family(name: str, family: Family) -> None:
    """Makes the family's ops exist whatever was built: defines them with their reference kernels when the compiled
    library is missing, and gives them reference CUDA kernels when it was built without CUDA."""
    FAMILIES[name] = family
    if _C is None:
        for schema in family.schemas.values():
            _fallback.define(schema)
        for op, kernel in family.reference_kernels.items():
            keys = ("CompositeImplicitAutograd",) if op in family.composite else ("CPU", "CUDA")
            if op in family.composite and "!)" in family.schemas[op]:
                # vmap meets an op before it decomposes, and its loop fallback refuses ops that write their
                # arguments: the composite serves as their batching rule.
                keys += ("FuncTorchBatched",)
            for key in keys:
                _fallback.impl(op, kernel, key)
    elif not _C.built_with_cuda():
        for op, kernel in family.reference_kernels.items():
            _fallback.impl(op, kernel, "CUDA")


def has_extension() -> bool:
    """Whether the compiled C++ ops are loaded."""
    return _C is not None


def has_testing_ops() -> bool:
    """Whether the compiled library carries the test-only ops (built with PE_EXT_TESTING=1)."""
    return _C is not None and _C.built_with_testing_ops()


def backend() -> dict[str, str]:
    """Which implementation runs on each device type, e.g. {'cpu': 'C++ extension', 'cuda': 'CUDA extension'}."""
    cuda = FALLBACK if _C is None or not _C.built_with_cuda() else EXTENSION_CUDA
    if not torch.cuda.is_available():
        cuda += " (no CUDA device present)"
    return {"cpu": EXTENSION_CPU if _C is not None else FALLBACK, "cuda": cuda}
