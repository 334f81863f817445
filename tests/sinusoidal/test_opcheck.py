"""Custom-op hygiene: every torch.ops.pe_ext op has a fake (meta) implementation, and torch.library.opcheck (schema,
autograd registration, fake tensors, AOT dispatch with static and dynamic shapes) passes on a representative set of
samples: dtypes, layouts, offsets, with and without a table, requires_grad on and off for add_pe."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import pe_ext  # noqa: F401  (registers the ops and their fake kernels)
from tests.helpers import FORCED_FALLBACK, requires_testing_ops

OPS = torch.ops.pe_ext
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def layouts(dtype, device):
    """(name, x, seq_dim, offset) for batch-first, sequence-first, 2-D, non-contiguous and odd-d_model inputs."""
    def randn(*shape):
        return torch.randn(*shape, device=device).to(dtype)

    return [
        ("BLD", randn(2, 5, 8), 1, 0),
        ("LBD", randn(5, 2, 8), 0, 3),
        ("LD", randn(5, 8), 0, 7),
        ("permuted", randn(5, 2, 8).transpose(0, 1), 1, 2),
        ("strided_d", randn(2, 5, 16)[..., ::2], 1, 1),
        ("odd_d", randn(3, 4, 7), 1, 5),
    ]


def tables(x, seq_dim, offset):
    """No table, a (rows, d_model) table in x's dtype, and the module's (1, rows, d_model) float32 buffer."""
    rows, d_model = offset + x.shape[seq_dim] + 2, x.shape[-1]
    return {
        "no_table": None,
        "table_2d": torch.randn(rows, d_model, device=x.device).to(x.dtype),
        "table_3d_fp32": torch.randn(1, rows, d_model, device=x.device),
    }


def samples(device, with_requires_grad=False):
    """Every layout in float32; the other dtypes on the three main layouts (the fake kernels do not branch on dtype)."""
    for dtype in DTYPES:
        for name, x, seq_dim, offset in layouts(dtype, device):
            if dtype != torch.float32 and name not in ("BLD", "LBD", "permuted"):
                continue
            for table_name, table in tables(x, seq_dim, offset).items():
                for requires_grad in (False, True) if with_requires_grad else (False,):
                    args_x = x.detach().requires_grad_(requires_grad)
                    args_table = None if table is None else table.detach().requires_grad_(requires_grad)
                    yield f"{dtype}-{name}-{table_name}-grad{int(requires_grad)}", args_x, args_table, seq_dim, offset


def check_all(op, cases):
    """opcheck on every (name, args[, kwargs]) case; reports each failing case by name instead of stopping at the
    first."""
    failures = {}
    for name, args, *kwargs in cases:
        try:
            torch.library.opcheck(op, args, *kwargs)
        except Exception as error:  # noqa: BLE001  (collect every failure)
            failures[name] = f"{type(error).__name__}: {str(error)[:500]}"
    assert not failures, failures


def keyword_samples(x, seq_dim, requires_grad=False):
    """The keyword arguments: other encodings, explicit positions with padding, a learnable alpha, dropout."""
    ids = torch.arange(x.shape[seq_dim], device=x.device).flip(0)
    alpha = torch.tensor(0.5, device=x.device, requires_grad=requires_grad)
    return {
        "default": {},
        "encoding": {"base": 500.0, "layout": "concatenated", "frequencies": "timescales", "precise_angle": True},
        "positions": {"positions": ids, "padding_idx": 1, "alpha": alpha},
        "dropout": {"dropout": 0.3, "seed": torch.tensor(11)},
    }


# The fallback's ops are composites that read explicit positions to check them (a data-dependent step that
# dynamic-shape tracing refuses); the compiled ops check them inside their kernels instead.
SKIPPED = ("positions",) if FORCED_FALLBACK else ()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_add_pe(device):
    check_all(OPS.add_pe.default, [(f"{name}-{kw_name}", (x, table, offset, 1.5, seq_dim), kwargs)
                                   for name, x, table, seq_dim, offset in samples(device, with_requires_grad=True)
                                   for kw_name, kwargs in keyword_samples(x, seq_dim, x.requires_grad).items()
                                   if kw_name not in SKIPPED])


@pytest.mark.skipif(FORCED_FALLBACK, reason="the fallback reads positions to check them (see test_opcheck_add_pe)")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fractional_negative_positions_and_given_frequencies(device):
    x = torch.randn(2, 5, 8, device=device, requires_grad=True)
    kwargs = {"positions": torch.rand(2, 5, device=device) * 100 - 50, "inv_freq": torch.rand(4, device=device),
              "layout": "concatenated_cos_first", "alpha": torch.tensor(0.5, device=device, requires_grad=True)}
    check_all(OPS.add_pe.default, [("fractional", (x, None, -3, 1.5, 1), kwargs)])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_add_pe_inplace(device):
    check_all(OPS.add_pe_.default, [(f"{name}-{kw_name}", (x.clone(), table, offset, 0.5, seq_dim), kwargs)
                                    for name, x, table, seq_dim, offset in samples(device)
                                    for kw_name, kwargs in keyword_samples(x, seq_dim).items()
                                    if kw_name not in SKIPPED])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_add_pe_out(device):
    cases = []
    for name, x, table, seq_dim, offset in samples(device):
        # out contiguous, and out whose last dimension is not unit-stride
        for out_name, out in [("out", torch.empty_like(x)), ("out_permuted", torch.empty_like(x.mT).mT)]:
            cases.append((f"{name}-{out_name}", (x, table, offset, 2.0, seq_dim, out)))
    check_all(OPS.add_pe_out.default, cases)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fill_table(device):
    cases = []
    for dtype, offset, (rows, d_model) in itertools.product(DTYPES, (0, 9), [(7, 8), (5, 3), (0, 4)]):
        out = torch.empty(rows, d_model, dtype=dtype, device=device)
        cases.append((f"{dtype}-{offset}-{rows}x{d_model}", (out, offset)))
        cases.append((f"{dtype}-{offset}-{rows}x{d_model}-transposed",
                      (torch.empty(d_model, rows, dtype=dtype, device=device).t(), offset), {"base": 500.0}))
        if "positions" not in SKIPPED:
            cases.append((f"{dtype}-{offset}-{rows}x{d_model}-positions", (out, offset),
                          {"positions": torch.arange(rows, device=device).flip(0), "padding_idx": 2}))
    check_all(OPS.fill_table_.default, cases)


@requires_testing_ops
def test_opcheck_grid_emulator():
    """The test-only op passes too (it mutates `out` and returns nothing, so torch generates its fake kernel)."""
    cases = []
    for name, x, table, seq_dim, offset in samples("cpu"):
        if name.startswith("torch.float32"):
            cases.append((name, (torch.empty_like(x), x, table, offset, 1.5, seq_dim, 4)))
    cases.append(("table", (torch.empty(9, 8), None, None, 3, 1.0, 0, 1)))
    check_all(OPS._add_pe_grid_emulator.default, cases)


def test_every_op_runs_on_fake_and_meta_tensors():
    """Shape propagation without data: what torch.compile, torch.export and the meta device rely on."""
    for make in (lambda: FakeTensorMode(), lambda: torch.device("meta")):
        with make():
            x = torch.empty(2, 5, 8).transpose(0, 1)
            table = torch.empty(1, 20, 8)
            out = OPS.add_pe(x, table, 3, 1.0, 0)
            assert out.shape == x.shape and out.stride() == torch.empty_like(x).stride() and out.dtype == x.dtype
            OPS.add_pe_(x, None, 3, 1.0, 0)
            OPS.add_pe_out(x, table, 3, 1.0, 0, torch.empty_like(x))
            OPS.fill_table_(torch.empty(20, 8), 0)
