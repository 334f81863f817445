"""Fused dropout: its statistics, the same mask on every implementation (CPU kernel, the CUDA kernel's body on the
CPU grid, the fallback, and CUDA when present), a backward that regenerates it, and eval()."""

from __future__ import annotations

import math

import pytest
import torch

import pe_ext
from tests.helpers import requires_extension
from tests.sinusoidal.impls import IMPLS
from tests.sinusoidal.oracle import oracle_add, tolerance


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_statistics_and_kept_values(impl, p):
    x = torch.randn(8, 64, 96)
    out = impl(x, None, 0, 2.0, 10000.0, 1, dropout=p, seed=torch.tensor(7))
    dropped = (out == 0).double().mean().item()
    n = out.numel()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 sigma of a binomial fraction
    kept = out != 0
    atol, rtol = tolerance(torch.float32, 64, 8.0 / (1 - p))
    torch.testing.assert_close(out[kept].double(), (oracle_add(x, scale=2.0) / (1 - p))[kept], atol=atol, rtol=rtol)
    # no pattern along any axis: every column and every position keeps about 1 - p
    assert ((out == 0).double().mean(dim=(0, 1)) - p).abs().max() < 0.1
    assert ((out == 0).double().mean(dim=(0, 2)) - p).abs().max() < 0.1


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("shape,seq_dim,layout", [((3, 7, 13), 1, "contiguous"), ((7, 3, 16), 0, "contiguous"),
                                                  ((5, 40), 0, "contiguous"), ((4, 6, 32), 1, "strided")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_every_implementation_draws_the_same_mask(impl, shape, seq_dim, layout, dtype):
    x = torch.randn(shape).to(dtype)
    if layout == "strided":
        x = torch.randn(*shape[:-1], 2 * shape[-1]).to(dtype)[..., ::2]
    seed = torch.tensor(2**40 + 11)
    reference = pe_ext.sinusoidal.fallback.add_pe(x, None, 3, 1.0, seq_dim, dropout=0.25, seed=seed)
    out = impl(x, None, 3, 1.0, 10000.0, seq_dim, dropout=0.25, seed=seed)
    assert torch.equal(out == 0, reference == 0)
    atol, rtol = tolerance(dtype, 20, 6.0)
    torch.testing.assert_close(out.double(), reference.double(), atol=atol, rtol=rtol)


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """Philox4x32-10 (Salmon et al., SC'11) in Python integers: the oracle for the kernels' mask."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & mask, (p0 >> 32) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c0, c1, c2, c3


def test_philox_oracle_reproduces_random123_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("p,seed", [(0.3, 2**40 + 977), (1 - 2**-24, 2**40 + 977), (2**-30, 2**40 + 977),
                                    (0.3, -(2**62) - 5)])
def test_mask_follows_the_philox_oracle(impl, p, seed):
    """Element with logical index i is kept iff (word i % 4 of Philox(counter i // 4, key seed)) >> 8 >= p * 2^24;
    the seed tensor's int64 bits are the uint64 key (a negative seed has its top bit set)."""
    x = torch.randn(3, 7, 13)  # rows of 13: a row's first index is rarely a multiple of 4
    out = impl(x, None, 0, 1.0, 10000.0, 1, dropout=p, seed=torch.tensor(seed))
    key = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    expected = [(philox4x32_10((i // 4, 0, 0, 0), key)[i % 4] >> 8) / 2**24 >= p for i in range(x.numel())]
    assert (out != 0).flatten().tolist() == expected


def test_seeds_come_from_torch_generator():
    x = torch.randn(4, 16, 32)
    torch.manual_seed(3)
    first = pe_ext.add_sinusoidal_pe(x, dropout=0.5)
    torch.manual_seed(3)
    assert torch.equal(pe_ext.add_sinusoidal_pe(x, dropout=0.5), first)
    assert not torch.equal(pe_ext.add_sinusoidal_pe(x, dropout=0.5), first)


@requires_extension
def test_backward_regenerates_the_mask():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    table = pe_ext.sinusoidal_table(10, 8, dtype=torch.float64).requires_grad_()
    alpha = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    f = lambda x, t, a: torch.ops.pe_ext.add_pe(x, t, 1, 1.5, 1, alpha=a, dropout=0.4, seed=torch.tensor(5))
    assert torch.autograd.gradcheck(f, (x, table, alpha))
    out = f(x, table, alpha)
    out.sum().backward()
    kept = (out != 0).double()
    torch.testing.assert_close(x.grad, kept * 1.5 / 0.6)


def test_module_dropout_is_fused_and_eval_disables_it():
    module = pe_ext.PositionalEncoding(32, max_len=64, dropout=0.3)
    x = torch.randn(4, 64, 32)
    module.train()
    out = module(x)
    assert 0.25 < (out == 0).float().mean().item() < 0.35
    module.eval()
    atol, rtol = tolerance(torch.float32, 64, 4.0)
    torch.testing.assert_close(module(x).double(), oracle_add(x), atol=atol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_draws_the_cpu_mask(dtype):
    x = torch.randn(6, 100, 72).to(dtype)
    for shape_x in (x, x.transpose(0, 1)):
        seq_dim = 1 if shape_x is x else 0
        cpu = torch.ops.pe_ext.add_pe(shape_x, None, 0, 1.0, seq_dim, dropout=0.2, seed=torch.tensor(123))
        cuda = torch.ops.pe_ext.add_pe(shape_x.cuda(), None, 0, 1.0, seq_dim, dropout=0.2, seed=torch.tensor(123)).cpu()
        assert torch.equal(cuda == 0, cpu == 0)


@pytest.mark.cuda
def test_cuda_seed_on_the_device_gives_the_cpu_seeds_mask():
    """A seed tensor on the GPU is read by the kernel itself (what CUDA graph replays rely on)."""
    x = torch.randn(4, 50, 72)
    cpu = torch.ops.pe_ext.add_pe(x, None, 0, 1.0, 1, dropout=0.3, seed=torch.tensor(-(2**62) - 5))
    cuda = torch.ops.pe_ext.add_pe(x.cuda(), None, 0, 1.0, 1, dropout=0.3,
                                   seed=torch.tensor(-(2**62) - 5, device="cuda")).cpu()
    assert torch.equal(cuda == 0, cpu == 0)


@pytest.mark.cuda
def test_cuda_graph_replays_of_a_training_module_draw_fresh_masks():
    """Under capture the module draws its seed on the GPU (graph-safe RNG), so each replay has its own mask; the
    kept values are eval()'s scaled by 1 / (1 - p)."""
    module = pe_ext.PositionalEncoding(64, max_len=128, dropout=0.5).cuda()
    static_x = torch.randn(4, 100, 64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        module(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(static_x)
    masks = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        masks.append(static_out == 0)
        kept = static_out != 0
        expected = module.eval()(static_x) / 0.5
        module.train()
        torch.testing.assert_close(static_out[kept], expected[kept])
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
