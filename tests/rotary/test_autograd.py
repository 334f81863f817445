"""Every autograd path through the rotary ops, against numerical derivatives and the float64 re-implementation in
torch ops (oracle.py): gradients and tangents of q and k (the transposed rotation), double backward, the in-place form
under autograd (torch's in-place rules, version counters), every torch.func transform and vmap."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import pe_ext
from tests.helpers import FORCED_FALLBACK
from tests.rotary.oracle import hf_inv_freq, oracle_angles, oracle_rotate

F64 = torch.float64

OPTIONS = {
    "plain": {},
    "gptj_partial_offset": {"style": "gptj", "rotary_dim": 4, "offset": 7, "attention_scaling": 0.8},
    "tables_positions": {"cos": torch.randn(9, 8, dtype=F64), "sin": torch.randn(9, 8, dtype=F64),
                         "positions": torch.tensor([4, 0, 8])},
}


@pytest.mark.parametrize("name", OPTIONS)
def test_gradients_and_tangents_match_numerical_derivatives(name):
    q = torch.randn(2, 3, 3, 8, dtype=F64, requires_grad=True)
    k = torch.randn(2, 1, 3, 8, dtype=F64, requires_grad=True)
    options = OPTIONS[name]
    assert gradcheck(lambda q, k: pe_ext.apply_rotary(q, k, **options), (q, k), check_forward_ad=True)
    assert gradcheck(lambda q: pe_ext.apply_rotary(q, **options), (q,), check_forward_ad=True)


def test_double_backward_and_packed_tokens():
    q = torch.randn(6, 2, 8, dtype=F64, requires_grad=True)
    cu = torch.tensor([0, 2, 6])
    assert gradgradcheck(lambda q: pe_ext.apply_rotary(q, cu_seqlens=cu, rotary_dim=6), (q,))


def reference(q, k=None, offset=0):
    """The rotation in float64 torch ops (bhsd), positions offset + l."""
    angles = oracle_angles(torch.arange(offset, offset + q.shape[2])[None], hf_inv_freq(10000.0, q.shape[-1]))

    def rotate(x):
        return oracle_rotate(x.transpose(1, 2), angles).transpose(1, 2)

    return rotate(q) if k is None else (rotate(q), rotate(k))


def test_in_place_follows_torchs_in_place_rules():
    """Leaves (and their views) that require grad are refused with torch's own message; a tracked non-leaf is recorded
    (its gradient flows through); the version counter is bumped, so a stale saved tensor is caught."""
    leaf = torch.randn(1, 2, 3, 8, requires_grad=True)
    for target in (leaf, leaf[:, 1:]):
        with pytest.raises(RuntimeError) as torch_error:
            target.add_(1)
        with pytest.raises(RuntimeError) as ours:
            pe_ext.apply_rotary(target, inplace=True)
        assert str(ours.value) == str(torch_error.value)

    w = torch.randn(1, 2, 3, 8, dtype=F64, requires_grad=True)
    q, k = w * 3, w[:, :1] * 2
    pe_ext.apply_rotary(q, k, offset=2, inplace=True)
    expected = reference(w * 3, w[:, :1] * 2, offset=2)
    torch.testing.assert_close((q, k), expected)
    upstream = (torch.randn(1, 2, 3, 8, dtype=F64), torch.randn(1, 1, 3, 8, dtype=F64))
    torch.testing.assert_close(torch.autograd.grad((q, k), w, upstream), torch.autograd.grad(expected, w, upstream))

    v = torch.randn(1, 2, 3, 8, requires_grad=True)
    a = torch.randn(1, 2, 3, 8)
    loss = (a * v).sum()  # saves a for v's gradient
    version = a._version
    pe_ext.apply_rotary(a, inplace=True)
    assert a._version == version + 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def rotary_loss(apply):
    return lambda q, k: sum(t.square().sum() * (i + 1) for i, t in enumerate(apply(q * q, k, offset=3)))


def test_every_torch_func_transform_matches_torch_ops():
    """grad, vjp, jacrev, jacfwd and per-sample gradients (vmap of grad) against the same loss in torch ops."""
    q, k = torch.randn(3, 2, 4, 6, dtype=F64), torch.randn(3, 1, 4, 6, dtype=F64)
    ours, theirs = rotary_loss(pe_ext.apply_rotary), rotary_loss(reference)

    def same(transform):
        torch.testing.assert_close(transform(ours), transform(theirs))

    same(lambda f: torch.func.grad(f, argnums=(0, 1))(q, k))
    same(lambda f: torch.func.vjp(f, q, k)[1](torch.tensor(1.0, dtype=F64)))
    same(lambda f: torch.func.jacrev(f, argnums=(0, 1))(q[:1], k[:1]))
    same(lambda f: torch.func.jacfwd(f, argnums=(0, 1))(q[:1], k[:1]))
    same(lambda f: torch.func.vmap(torch.func.grad(f, argnums=(0, 1)))(q[:, None], k[:, None]))


def test_vmap_folds_or_loops_and_writes():
    """vmap of rotary (folded into the batch, or per sample where positions differ) and of the in-place form, against
    the torch-ops re-implementation; the compiled ops without torch's slow loop fallback."""
    vmap = torch.func.vmap
    q, k = torch.randn(3, 2, 2, 4, 6, dtype=F64), torch.randn(3, 2, 1, 4, 6, dtype=F64)
    with warnings.catch_warnings():
        if not FORCED_FALLBACK:
            warnings.filterwarnings("error", message=".*performance drop")
        expected = tuple(t.unflatten(0, (3, 2)) for t in reference(q.flatten(0, 1), k.flatten(0, 1), offset=1))
        torch.testing.assert_close(vmap(lambda q, k: pe_ext.apply_rotary(q, k, offset=1))(q, k), expected)
        positions = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0], [5, 5, 6, 6]])
        got = vmap(lambda q, p: pe_ext.apply_rotary(q, positions=p))(q, positions)
        for sample in range(3):
            torch.testing.assert_close(got[sample], pe_ext.apply_rotary(q[sample], positions=positions[sample]))
        written = q.clone()
        vmap(lambda t: pe_ext.apply_rotary(t, offset=1, inplace=True))(written)
        torch.testing.assert_close(written, reference(q.flatten(0, 1), offset=1).unflatten(0, (3, 2)))


def test_trainable_constants_are_refused_under_torch_func():
    q, cos = torch.randn(1, 1, 3, 8), torch.randn(3, 8)
    with pytest.raises(RuntimeError, match=r"cos requires grad, but rotary treats cos, sin and inv_freq as constants"):
        torch.func.grad(lambda c: pe_ext.apply_rotary(q, cos=c, sin=c).sum())(cos)
