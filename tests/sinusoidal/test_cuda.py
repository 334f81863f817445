"""The CUDA kernels against the CPU kernel and the float64 oracle. Skipped, with the reason, without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import pe_ext
from tests.helpers import DTYPES, LAYOUTS, make_x
from tests.sinusoidal.impls import ENCODINGS, check
from tests.sinusoidal.oracle import (
    ClassicPositionalEncoding,
    classic_div_term,
    float32_ulps,
    oracle_add,
    oracle_encoding,
    oracle_pe,
    tolerance,
)

pytestmark = pytest.mark.cuda


def cpu_and_cuda(x, table, offset, scale, seq_dim):
    """The op on a CUDA x (laid out on the device as the test built it) and on a CPU copy of it."""
    cuda = torch.ops.pe_ext.add_pe(x, None if table is None else table.cuda(), offset, scale, seq_dim)
    cpu = torch.ops.pe_ext.add_pe(x.cpu(), table, offset, scale, seq_dim)
    assert cuda.is_cuda and cuda.dtype == x.dtype
    return cpu, cuda.cpu()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,seq_dim", [((3, 50, 64), 1), ((50, 3, 64), 0), ((70, 16), 0), ((2, 9, 17), 1),
                                           ((64, 1, 512), 1), ((1, 2048, 1000), 1), ((3, 70_000, 8), 1)],
                         ids=["BLD", "LBD", "LD", "odd_d", "decode", "long", "grid_stride_and_batch_split"])
@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
def test_cuda_matches_cpu_and_oracle(dtype, layout, shape, seq_dim, mode):
    # Built on the device: x.cuda() of a CPU view would arrive contiguous and aligned, and the misaligned, strided and
    # sliced cases would never reach the element-wise and tail paths.
    x = make_x(shape, dtype, layout, device="cuda")
    seq_len, d_model = x.shape[seq_dim if x.dim() == 3 else 0], x.shape[-1]
    table = pe_ext.sinusoidal_table(seq_len + 7, d_model) if mode == "table" else None
    cpu, cuda = cpu_and_cuda(x, table, 7, 1.5, seq_dim)
    check(cuda, x.cpu(), offset=7, scale=1.5, seq_dim=seq_dim)
    # CPU and CUDA share the formulas; they differ only by sin/cos/fma rounding (a few float32 ulps of the angle).
    atol, rtol = tolerance(dtype, seq_len + 7, 6.0)
    torch.testing.assert_close(cuda.double(), cpu.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_writes_into_any_layout(layout):
    """In place and out= into targets laid out on the device (strided, sliced, misaligned, permuted)."""
    x = make_x((4, 33, 40), torch.bfloat16, layout, device="cuda")
    expected = oracle_add(x.cpu(), offset=2)
    atol, rtol = tolerance(torch.bfloat16, 35, 4.0)
    out = make_x((4, 33, 40), torch.bfloat16, layout, device="cuda").fill_(float("nan"))
    pe_ext.add_sinusoidal_pe(x, offset=2, out=out)
    torch.testing.assert_close(out.cpu().double(), expected, atol=atol, rtol=rtol)
    pe_ext.add_sinusoidal_pe_(x, offset=2)
    torch.testing.assert_close(x.cpu().double(), expected, atol=atol, rtol=rtol)


def test_cuda_on_a_side_stream():
    """The kernels launch on the current stream: work queued on a side stream is ordered with them."""
    side = torch.cuda.Stream()
    x = torch.randn(8, 512, 256, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = pe_ext.add_sinusoidal_pe(x.mul(2.0), offset=5)
    torch.cuda.current_stream().wait_stream(side)
    atol, rtol = tolerance(torch.float32, 517, 8.0)
    torch.testing.assert_close(y.cpu().double(), oracle_add(2.0 * x.cpu(), offset=5), atol=atol, rtol=rtol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_second_device():
    """Tensors on cuda:1 run there (the device guard), whatever the current device."""
    x = torch.randn(2, 100, 64, device="cuda:1")
    table = pe_ext.sinusoidal_table(120, 64, device="cuda:1")
    for t in (None, table):
        y = pe_ext.add_sinusoidal_pe(x, t, offset=3)
        assert y.device == x.device
        atol, rtol = tolerance(torch.float32, 103, 4.0)
        torch.testing.assert_close(y.cpu().double(), oracle_add(x.cpu(), offset=3), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cuda_large_positions(dtype):
    d_model, start, length = 128, 100_000, 65_536
    x = torch.zeros(1, length, d_model, dtype=dtype, device="cuda")
    ours = torch.ops.pe_ext.add_pe(x, None, start, 1.0, 1)[0].cpu().double()
    truth = oracle_pe(torch.arange(start, start + length), d_model)
    classic = ClassicPositionalEncoding(d_model, max_len=start + length).pe[0, start:].double()
    if dtype == torch.float64:
        assert (ours - truth).abs().max() < 1e-9
    else:
        assert (ours - truth).abs().max() <= (classic - truth).abs().max() * 1.05 + 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_table_builder_and_inplace(dtype):
    table = pe_ext.sinusoidal_table(1000, 96, offset=5, dtype=dtype, device="cuda")
    atol, rtol = tolerance(dtype, 1005)
    torch.testing.assert_close(table.cpu().double(), oracle_pe(torch.arange(5, 1005), 96), atol=atol, rtol=rtol)
    x = torch.randn(4, 100, 96, device="cuda").to(dtype)
    expected = oracle_add(x.cpu(), offset=3)
    pe_ext.add_sinusoidal_pe_(x, offset=3)
    atol, rtol = tolerance(dtype, 103, 4.0)
    torch.testing.assert_close(x.cpu().double(), expected, atol=atol, rtol=rtol)


def test_module_moved_to_cuda():
    module = pe_ext.PositionalEncoding(64, max_len=512, dropout=0.0).cuda()
    assert module.pe.is_cuda
    classic = ClassicPositionalEncoding(64, max_len=512).cuda()
    module.load_state_dict(classic.state_dict())
    x = torch.randn(8, 512, 64, device="cuda")
    assert torch.equal(module(x), classic(x))
    for buffer in ({"persistent": False}, {"buffer": "none"}):
        moved = pe_ext.PositionalEncoding(64, max_len=512, **buffer).to("cuda").to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        atol, rtol = tolerance(torch.bfloat16, 512, 4.0)
        out = moved(xb)
        assert out.dtype == torch.bfloat16 and out.is_cuda
        torch.testing.assert_close(out.cpu().double(), oracle_add(xb.cpu()), atol=2 * atol, rtol=rtol)


def test_cuda_empty_inputs():
    for shape in [(0, 5, 8), (3, 0, 8), (0, 8)]:
        x = torch.randn(shape, device="cuda")
        assert pe_ext.add_sinusoidal_pe(x).shape == x.shape


def test_cuda_device_mismatch_is_refused():
    with pytest.raises(ValueError, match="table is on"):
        pe_ext.add_sinusoidal_pe(torch.randn(1, 4, 8, device="cuda"), pe_ext.sinusoidal_table(4, 8))


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d_model", [7, 36, 64, 1024])
def test_cuda_conventions_match_cpu_and_oracle(encoding, dtype, d_model):
    x = torch.randn(4, 300, d_model).to(dtype)
    cpu = pe_ext.add_sinusoidal_pe(x, offset=11, **encoding)
    cuda = pe_ext.add_sinusoidal_pe(x.cuda(), offset=11, **encoding).cpu()
    atol, rtol = tolerance(dtype, 311, 4.0)
    expected = x.double() + oracle_encoding(torch.arange(11, 311), d_model, **encoding)
    torch.testing.assert_close(cuda.double(), expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(cuda.double(), cpu.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("start", [300_000, 16_000_000])
def test_cuda_precise_angle(start):
    x = torch.zeros(2, 1024, 256, device="cuda")
    out = pe_ext.add_sinusoidal_pe(x, offset=start, precise_angle=True)[0].cpu().double()
    assert (out - oracle_encoding(torch.arange(start, start + 1024), 256)).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["on_the_fly", "table"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_kind", ["per_row", "shared"])
def test_cuda_positions_padding_alpha(mode, dtype, ids_kind):
    x = torch.randn(8, 64, 128).to(dtype)
    ids = torch.randint(0, 200, (8, 64) if ids_kind == "per_row" else (64,))
    table = pe_ext.sinusoidal_table(210, 128) if mode == "table" else None
    alpha = torch.tensor(0.6)
    kwargs = {"positions": ids, "padding_idx": 7, "alpha": alpha, "offset": 3, "scale": 1.25}
    cpu = pe_ext.add_sinusoidal_pe(x, table, **kwargs)
    cuda_kwargs = {**kwargs, "positions": ids.cuda(), "alpha": alpha.cuda()}
    cuda = pe_ext.add_sinusoidal_pe(x.cuda(), None if table is None else table.cuda(), **cuda_kwargs).cpu()
    atol, rtol = tolerance(dtype, 210, 6.0)
    torch.testing.assert_close(cuda.double(), cpu.double(), atol=atol, rtol=rtol)


def test_cuda_gradients_of_table_and_alpha():
    x = torch.randn(3, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    table = pe_ext.sinusoidal_table(12, 6, dtype=torch.float64, device="cuda").requires_grad_()
    alpha = torch.tensor(0.8, dtype=torch.float64, device="cuda", requires_grad=True)
    ids = torch.tensor([[2, 2, 0, 9, 1], [1, 3, 4, 5, 6], [0, 0, 0, 1, 1]], device="cuda")
    assert torch.autograd.gradcheck(lambda x, t, a: pe_ext.add_sinusoidal_pe(
        x, t, scale=1.5, alpha=a, positions=ids, padding_idx=3), (x, table, alpha))


# CUDA's sinf/cosf are within 2 ulps (CUDA C Programming Guide, mathematical functions), torch's CPU sin/cos (Sleef,
# which built the classic module) within 1, pe_ext's CPU polynomials within 0.501: with the same float32 angles, the
# values differ by at most the sum.
CUDA_SIN_COS_ULPS = 3


@pytest.mark.parametrize("d_model,max_len", [(2, 131_072), (64, 32_768), (1000, 2048), (8192, 256)])
def test_cuda_values_equal_the_classic_module(d_model, max_len):
    """The classic module is built by torch on the CPU (as users build it) and moved; pe_ext's table built on the GPU
    and its on-the-fly values there take the same float32 frequencies and angles."""
    classic = ClassicPositionalEncoding(d_model, max_len).pe[0]
    table = pe_ext.sinusoidal_table(max_len, d_model, device="cuda").cpu()
    on_the_fly = torch.ops.pe_ext.add_pe(torch.zeros(1, max_len, d_model, device="cuda"), None, 0, 1.0, 1)[0].cpu()
    assert float32_ulps(table, classic).max() <= CUDA_SIN_COS_ULPS
    assert float32_ulps(on_the_fly, classic).max() <= CUDA_SIN_COS_ULPS


@pytest.mark.parametrize("keywords", [{}, {"layout": "concatenated_cos_first"}, {"frequency_rounding": "correct"},
                                      {"inv_freq": classic_div_term(128) * 1.5}, {"precise_angle": True}],
                         ids=["default", "cos_first", "correct", "inv_freq", "precise"])
@pytest.mark.parametrize("kind", ["fractional", "ids"])
def test_cuda_fractional_negative_positions_and_options_match_cpu(keywords, kind):
    gen = torch.Generator().manual_seed(3)
    positions = (torch.rand(4, 64, generator=gen) - 0.5) * 4000
    positions = positions if kind == "fractional" else positions.long()
    x = torch.zeros(4, 64, 128)
    cpu = torch.ops.pe_ext.add_pe(x, None, -20, 1.0, 1, positions=positions, **keywords)
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in keywords.items()}
    cuda = torch.ops.pe_ext.add_pe(x.cuda(), None, -20, 1.0, 1, positions=positions.cuda(), **on_gpu).cpu()
    assert float32_ulps(cuda, cpu).max() <= CUDA_SIN_COS_ULPS
