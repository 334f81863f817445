"""Loads the compiled ops (pe_ext._C) or, where they are missing, registers the pure-PyTorch reference under the
same names, so torch.ops.pe_ext.* always exists and every caller takes one path. backend() says which runs where.
"""

from __future__ import annotations

import os
import warnings

import torch

from .sinusoidal import reference

# The op schemas as csrc/ops.cpp declares them; the fallback defines these when no compiled library is loaded, and a
# test checks that they match the compiled ones.
_ENCODING = ('float base=10000.0, str layout="interleaved", str frequencies="paper", float min_timescale=1.0, '
             'float max_timescale=10000.0, bool precise_angle=False, Tensor? positions=None, int padding_idx=-1, '
             'Tensor? alpha=None, float dropout=0.0, int seed=0')
SCHEMAS = {
    "add_pe": f"add_pe(Tensor x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *, {_ENCODING}) "
    "-> Tensor",
    "add_pe_": f"add_pe_(Tensor(a!) x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *, "
    f"{_ENCODING}) -> ()",
    "add_pe_out": f"add_pe_out(Tensor x, Tensor? table, SymInt offset, float scale, int seq_dim, Tensor(a!) out, *, "
    f"{_ENCODING}) -> ()",
    "fill_table_": f"fill_table_(Tensor(a!) out, SymInt offset=0, *, {_ENCODING}) -> ()",
}
_REFERENCE_KERNELS = {
    "add_pe": reference.add_pe,
    "add_pe_": reference.add_pe_,
    "add_pe_out": reference.add_pe_out,
    "fill_table_": reference.fill_table_,
}

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
    _lib = torch.library.Library("pe_ext", "DEF")
    for _schema in SCHEMAS.values():
        _lib.define(_schema)
    # add_pe as a composite of torch ops: autograd, meta and torch.compile come from the ops it is made of.
    _lib.impl("add_pe", reference.add_pe, "CompositeImplicitAutograd")
    for _name in ("add_pe_", "add_pe_out", "fill_table_"):
        for _key in ("CPU", "CUDA"):
            _lib.impl(_name, _REFERENCE_KERNELS[_name], _key)
elif not _C.built_with_cuda():
    _lib = torch.library.Library("pe_ext", "IMPL")
    for _name, _kernel in _REFERENCE_KERNELS.items():
        _lib.impl(_name, _kernel, "CUDA")


def has_extension() -> bool:
    """Whether the compiled C++ ops are loaded."""
    return _C is not None


def backend() -> dict[str, str]:
    """Which implementation runs on each device type, e.g. {'cpu': 'C++ extension', 'cuda': 'CUDA extension'}."""
    cuda = FALLBACK if _C is None or not _C.built_with_cuda() else EXTENSION_CUDA
    if not torch.cuda.is_available():
        cuda += " (no CUDA device present)"
    return {"cpu": EXTENSION_CPU if _C is not None else FALLBACK, "cuda": cuda}
