"""The CUDA kernel against the CPU kernel and the float64 oracle, on q and k laid out on the device. Skipped, with the
reason, without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import pe_ext
from tests.rotary.impls import check
from tests.rotary.oracle import tolerance
from tests.rotary.test_parity import CASES, make_case

pytestmark = pytest.mark.cuda


def cpu_copy(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_cpu_and_oracle(name, inplace):
    q, k, options, positions, inv_freq = make_case(CASES[name], device="cuda")
    cpu_options = {key: cpu_copy(value) for key, value in options.items()}
    cpu = pe_ext.apply_rotary(q.cpu(), None if k is None else k.cpu(), **cpu_options)
    cuda = pe_ext.apply_rotary(q.clone() if inplace else q, None if k is None else (k.clone() if inplace else k),
                               inplace=inplace, **options)
    cpu, cuda = (cpu, cuda) if k is not None else ((cpu,), (cuda,))
    layout, style = options["layout"], options.get("style", "neox")
    scaling = options.get("attention_scaling", 1.0)
    for got, want, x in zip(cuda, cpu, (q, k)):
        assert got.is_cuda
        check(got, x, positions, inv_freq, layout, style, scaling)
        atol, rtol = tolerance(x.dtype, 8.0)  # the same formulas: sin/cos roundings apart
        torch.testing.assert_close(got.cpu().double(), want.double(), atol=atol, rtol=rtol)


def test_cuda_tables_match_cpu_bitwise():
    """Hugging Face's cos and sin read by both kernels: the same products and sums, rounded the same way."""
    q, k = torch.randn(3, 8, 50, 128, device="cuda"), torch.randn(3, 2, 50, 128, device="cuda")
    angles = torch.arange(50, device="cuda")[:, None].float() * torch.rand(64, device="cuda")
    emb = torch.cat((angles, angles), -1).expand(3, 50, 128)
    for dtype in (torch.float32, torch.bfloat16):
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        args = (q.to(dtype), k.to(dtype), cos, sin)
        cuda = pe_ext.apply_rotary_pos_emb(*args)
        cpu = pe_ext.apply_rotary_pos_emb(*(t.cpu() for t in args))
        for got, want in zip(cuda, cpu):
            assert torch.equal(got.cpu(), want)


def test_cuda_second_stream_and_large_rotary_dim():
    """The current stream is used; more frequencies than travel inline (rotary_dim 1024) are read from the device."""
    side = torch.cuda.Stream()
    q = torch.randn(2, 2, 9, 1024, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = pe_ext.apply_rotary(q * 2)
    torch.cuda.current_stream().wait_stream(side)
    expected = pe_ext.apply_rotary(q.cpu() * 2)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
