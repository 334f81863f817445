"""Which implementation runs, and the op registry every family goes through."""

from __future__ import annotations

import torch

import pe_ext
from pe_ext import _backend
from tests.helpers import requires_extension


@requires_extension
def test_extension_is_loaded():
    """CI builds the extension; failing to load it must fail the suite, not silently test the fallback."""
    assert pe_ext.has_extension(), _backend.LOAD_ERROR
    assert pe_ext.backend()["cpu"] == _backend.EXTENSION_CPU


def test_every_family_is_registered():
    assert set(_backend.FAMILIES) >= {"sinusoidal"}
    for family in _backend.FAMILIES.values():
        assert set(family.reference_kernels) == set(family.schemas)
        for name in family.schemas:
            assert hasattr(torch.ops.pe_ext, name), name


@requires_extension
def test_fallback_schemas_match_the_compiled_ones():
    """The Python schema tables (used when nothing is compiled) and the C++ ones are written apart: they must agree."""
    for family in _backend.FAMILIES.values():
        for name, schema in family.schemas.items():
            compiled = getattr(torch.ops.pe_ext, name).default._schema
            assert str(compiled) == str(torch._C.parse_schema("pe_ext::" + schema)), name


def test_backend_reports_every_device():
    info = pe_ext.backend()
    assert set(info) == {"cpu", "cuda"}
    if not torch.cuda.is_available():
        assert "no CUDA device present" in info["cuda"]
