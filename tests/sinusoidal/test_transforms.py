"""Every autograd path through the ops, against torch's own ops, numerical derivatives and a re-implementation in
torch ops: the writing forms under autograd (version counters, inference tensors, torch's in-place rules),
forward-mode AD, and every torch.func transform. The last test runs this file (and the other files' tests of the same
behaviours) again with only the pure-PyTorch fallback registered under the op names."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import gradcheck

import pe_ext
from tests.helpers import FORCED_FALLBACK
from tests.sinusoidal.oracle import oracle_pe

F64 = torch.float64


def fill_rows(out, alpha=None):
    """fill_table_ at offset 2 (an optional alpha)."""
    torch.ops.pe_ext.fill_table_(out, 2, **({} if alpha is None else {"alpha": alpha}))


# Each writing form, as a function writing into a tensor `a` of shape (2, 5, 8).
WRITES = {
    "add_pe_": lambda a: pe_ext.add_sinusoidal_pe_(a, offset=1),
    "add_pe_out": lambda a: pe_ext.add_sinusoidal_pe(torch.ones(2, 5, 8, dtype=a.dtype), out=a),
    "fill_table_": lambda a: fill_rows(a[0]),  # a view: a's version counter is the one bumped
}


def reference_add(x, table=None, offset=0, scale=1.0, alpha=1.0, seq_first=False):
    """x * scale + alpha * pe in torch ops, pe from `table` or the float64 oracle, positions along dimension -2 (-3
    when seq_first): the re-implementation that torch's autograd and torch.func differentiate for comparison."""
    seq_len, d_model = x.shape[-3 if seq_first else -2], x.shape[-1]
    positions = range(offset, offset + seq_len)
    rows = table[offset : offset + seq_len] if table is not None else oracle_pe(positions, d_model)
    return x * scale + alpha * (rows.unsqueeze(1) if seq_first else rows)


# The writing forms under autograd


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES)
def test_writes_bump_the_version_so_a_saved_tensor_cannot_be_used_stale(write):
    w = torch.randn(2, 5, 8, requires_grad=True)
    a = torch.randn(2, 5, 8)
    loss = (a * w).sum()  # saves a for w's gradient
    torch_own = a.clone()
    before = torch_own._version
    torch_own.add_(1)
    expected_version = a._version + (torch_own._version - before)  # one bump per call, as torch's in-place ops
    write(a)
    assert a._version == expected_version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES)
def test_inference_tensors_are_written_only_in_inference_mode(write):
    with torch.inference_mode():
        a = torch.zeros(2, 5, 8)
    with pytest.raises(RuntimeError, match=r"inference tensor \(made under torch.inference_mode\(\)\)"):
        write(a)
    assert (a == 0).all()  # refused before writing (torch's own ops write, then refuse)
    with torch.inference_mode():
        write(a)
    assert (a != 0).any()


def test_in_place_follows_torchs_in_place_rules():
    """Leaves and views of leaves that require grad are refused with torch's own message; a tracked tensor is
    recorded (its gradient flows through), and a tracked table makes x tracked, as for a.add_(b)."""
    leaf = torch.randn(2, 5, 8, requires_grad=True)
    for target in (leaf, leaf[:, 1:]):
        with pytest.raises(RuntimeError) as torch_error:
            target.add_(1)
        with pytest.raises(RuntimeError) as ours:
            pe_ext.add_sinusoidal_pe_(target)
        assert str(ours.value) == str(torch_error.value)

    w = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    a = w * 3
    pe_ext.add_sinusoidal_pe_(a, offset=2, scale=2.0)
    expected = reference_add(w * 3, offset=2, scale=2.0)
    torch.testing.assert_close(a, expected)
    upstream = torch.randn(2, 5, 8, dtype=F64)
    (got,) = torch.autograd.grad(a, w, upstream)
    (want,) = torch.autograd.grad(expected, w, upstream)
    torch.testing.assert_close(got, want)

    x = torch.randn(2, 5, 8, dtype=F64)
    table = torch.randn(9, 8, dtype=F64, requires_grad=True)
    pe_ext.add_sinusoidal_pe_(x, table, offset=1)
    assert x.requires_grad
    (got,) = torch.autograd.grad(x, table, upstream)
    (want,) = torch.autograd.grad(reference_add(torch.zeros(2, 5, 8, dtype=F64), table, offset=1), table, upstream)
    torch.testing.assert_close(got, want)


def test_in_place_forms_are_differentiable_in_both_modes():
    """gradcheck (numerical derivatives, reverse and forward mode) of add_pe_ into a copy and of fill_table_."""
    x = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    table = torch.randn(9, 8, dtype=F64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def in_place(x, table, alpha):
        y = x.clone()
        pe_ext.add_sinusoidal_pe_(y, table, offset=1, scale=1.5, alpha=alpha)
        return y

    def fill(alpha):
        out = torch.zeros(6, 8, dtype=F64)
        fill_rows(out, alpha)
        return out

    assert gradcheck(in_place, (x, table, alpha), check_forward_ad=True)
    assert gradcheck(fill, (alpha,), check_forward_ad=True)


def test_out_refuses_tracked_tensors_in_both_modes():
    out = torch.empty(2, 5, 8)
    for name, x, table in [("x", torch.randn(2, 5, 8, requires_grad=True), None),
                           ("table", torch.randn(2, 5, 8), torch.randn(5, 8, requires_grad=True))]:
        with pytest.raises(RuntimeError, match=rf"pe_ext: {name} requires grad, but pe_ext::add_pe_out \(out=\)"):
            pe_ext.add_sinusoidal_pe(x, table, out=out)
    with fwAD.dual_level():
        dual = fwAD.make_dual(torch.randn(2, 5, 8), torch.randn(2, 5, 8))
        with pytest.raises(RuntimeError, match=r"pe_ext: x requires grad, but pe_ext::add_pe_out \(out=\)"):
            pe_ext.add_sinusoidal_pe(dual, out=out)
    x = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    out = torch.empty(2, 5, 8, dtype=F64)
    with torch.no_grad():  # e.g. an inference step on trainable tensors
        assert pe_ext.add_sinusoidal_pe(x, out=out) is out
    torch.testing.assert_close(out, reference_add(x.detach()))


# Forward-mode AD


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_forward_mode_tangents_match_numerical_derivatives(table, dropout):
    """gradcheck in both modes: the tangent is scale * x_t + alpha * table_t[rows] + alpha_t * pe, through the
    same dropout mask as the value."""
    x = torch.randn(2, 5, 8, dtype=F64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=F64, requires_grad=True)
    seed = torch.tensor(11)
    inputs = (x, alpha, torch.randn(9, 8, dtype=F64, requires_grad=True)) if table else (x, alpha)

    def f(x, alpha, table=None):
        return torch.ops.pe_ext.add_pe(x, table, 1, 1.5, 1, alpha=alpha, padding_idx=3, dropout=dropout, seed=seed)

    assert gradcheck(f, inputs, check_forward_ad=True)


def test_forward_mode_tangent_through_the_public_apis():
    x, v = torch.randn(2, 5, 8, dtype=F64), torch.randn(2, 5, 8, dtype=F64)
    alpha = torch.tensor(0.5, dtype=F64)
    _, tangent = torch.func.jvp(lambda x, a: pe_ext.add_sinusoidal_pe(x, scale=2.5, alpha=a), (x, alpha),
                                (v, torch.tensor(2.0, dtype=F64)))
    torch.testing.assert_close(tangent, 2.5 * v + 2.0 * oracle_pe(range(5), 8))
    module = pe_ext.PositionalEncoding(8, 16, scale=3.0)
    with fwAD.dual_level():
        out = module(fwAD.make_dual(x, v))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, 3.0 * v)


# torch.func


def loss(add):
    return lambda x, table, alpha: add(x, table, offset=2, scale=1.5, alpha=alpha).square().sum()


@pytest.mark.parametrize("table", [False, True])
def test_every_torch_func_transform_matches_torch_ops(table):
    """grad, vjp, jacrev, jacfwd, hessian and per-sample gradients (vmap of grad) of pe_ext against the same
    function written in torch ops."""
    x = torch.randn(3, 4, 6, dtype=F64)
    rows = torch.randn(8, 6, dtype=F64) if table else None
    alpha = torch.tensor(0.8, dtype=F64)
    ours, reference = loss(pe_ext.add_sinusoidal_pe), loss(reference_add)
    argnums = (0, 1, 2) if table else (0, 2)

    def same(transform):
        torch.testing.assert_close(transform(ours), transform(reference))

    same(lambda f: torch.func.grad(f, argnums=argnums)(x, rows, alpha))
    same(lambda f: torch.func.vjp(lambda x, a: f(x, rows, a), x, alpha)[1](torch.tensor(1.0, dtype=F64)))
    same(lambda f: torch.func.jacrev(f, argnums=argnums)(x, rows, alpha))
    same(lambda f: torch.func.jacfwd(f, argnums=argnums)(x, rows, alpha))
    same(lambda f: torch.func.hessian(lambda a: f(x, rows, a))(alpha))
    same(lambda f: torch.func.vmap(torch.func.grad(f, argnums=argnums), in_dims=(0, None, None))(x, rows, alpha))


def test_per_sample_gradients_of_a_module_parameter():
    """functional_call + vmap(grad): ESPnet's learnable alpha gets one gradient per sample, sum(grad * pe)."""
    module = pe_ext.ScaledPositionalEncoding(6, 16, alpha=0.5).double()
    params = {"alpha": module.alpha.detach()}
    x = torch.randn(5, 4, 6, dtype=F64)

    def sample_loss(params, sample):
        return torch.func.functional_call(module, params, (sample.unsqueeze(0),)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0))(params, x)["alpha"]
    assert per_sample.shape == (5,)
    for sample, got in zip(x, per_sample):
        alpha = module.alpha.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(reference_add(sample, alpha=alpha).square().sum(), alpha)
        torch.testing.assert_close(got, want)


def test_vmap_of_every_op_computes_each_sample():
    """vmap of each op against the torch-ops re-implementation (or, with dropout, the op on each sample: vmap's
    definition), x vmapped along any dimension, other arguments vmapped too; the compiled ops without torch's slow
    loop fallback (which warns, and refuses ops that write their arguments)."""
    vmap = torch.func.vmap
    x = torch.randn(3, 2, 4, 6, dtype=F64)  # 3 samples of (2, 4, 6)
    with warnings.catch_warnings():
        if not FORCED_FALLBACK:
            warnings.filterwarnings("error", message=".*performance drop")
        for batch_first in (True, False):
            got = vmap(lambda t, bf=batch_first: pe_ext.add_sinusoidal_pe(t, offset=1, scale=1.5, batch_first=bf))(x)
            torch.testing.assert_close(got, reference_add(x, offset=1, scale=1.5, seq_first=not batch_first))
        torch.testing.assert_close(vmap(pe_ext.add_sinusoidal_pe, in_dims=1)(x), reference_add(x.transpose(0, 1)))
        alphas, ids = torch.randn(3, dtype=F64), torch.randint(0, 30, (3, 4))
        got = vmap(lambda t, a, p: pe_ext.add_sinusoidal_pe(t, alpha=a, positions=p))(x[:, 0], alphas, ids)
        torch.testing.assert_close(got, x[:, 0] + alphas[:, None, None] * oracle_pe(ids.reshape(-1), 6).view(3, 4, 6))
        seed = torch.tensor(9)
        got = vmap(lambda t: torch.ops.pe_ext.add_pe(t, None, 0, 1.0, 1, dropout=0.5, seed=seed))(x)
        torch.testing.assert_close(got, torch.stack([torch.ops.pe_ext.add_pe(t, None, 0, 1.0, 1, dropout=0.5, seed=seed)
                                                     for t in x]))
        written = x.clone()
        vmap(lambda t: pe_ext.add_sinusoidal_pe_(t, offset=2))(written)
        torch.testing.assert_close(written, reference_add(x, offset=2))
        out = torch.empty_like(x)
        vmap(lambda t, o: pe_ext.add_sinusoidal_pe(t, out=o))(x, out)
        torch.testing.assert_close(out, reference_add(x))
        tables = torch.empty(3, 5, 6, dtype=F64)
        vmap(lambda o: fill_rows(o) or o)(tables)
        torch.testing.assert_close(tables, oracle_pe(range(2, 7), 6).expand(3, 5, 6))
    with pytest.raises(RuntimeError):  # one unbatched out cannot hold every sample's result
        vmap(lambda t: pe_ext.add_sinusoidal_pe(t, out=torch.empty(2, 4, 6, dtype=F64)))(x)


@pytest.mark.skipif(FORCED_FALLBACK, reason="already running under the fallback")
def test_the_same_paths_under_the_fallback():
    """This file, and the other files' tests of issue 11's behaviours, with the fallback registered under the op
    names (no compiled extension loaded)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tests = [os.path.join("tests", "sinusoidal", name) for name in (
        "test_transforms.py",
        "test_compile_export.py::test_training_with_dropout_compiles_in_one_graph_and_draws_a_fresh_mask_per_call",
        "test_compile_export.py::test_export_of_a_training_module_with_dropout_draws_a_fresh_mask_per_call",
        "test_module.py::test_constructors_check_every_argument",
        "test_module.py::test_parametrized_alpha_and_table",
        "test_layers.py::test_grow_follows_explicit_positions",
        "test_layers.py::test_espnets_layers_and_their_gradients",
        "test_layers.py::test_scaled_positional_encoding_state_dict_is_espnets",
        "test_concurrency.py::test_threads_sharing_a_growing_module",
    )]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning", *tests],
        env={**os.environ, "PE_EXT_FORCE_FALLBACK": "1"}, cwd=root, capture_output=True, text=True, check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
