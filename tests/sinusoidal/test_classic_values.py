"""pe_ext's values against the layers users replace: the classic module built by torch itself (its float32 div_term
and angles) for d_model 1 to 8192 and positions past 100k, fairseq's and diffusers' embeddings, and the float64
oracle for fractional, negative and user-given-frequency positions; on the C++ kernels, the CUDA kernel body run
over its grid on the CPU, and the fallback. Widths and positions are sampled (ends, odd widths, powers of two, far
positions) to keep the suite short."""

from __future__ import annotations

import math

import pytest
import torch

import pe_ext
from tests.helpers import requires_extension, requires_testing_ops
from tests.sinusoidal.impls import IMPLS
from tests.sinusoidal.oracle import (
    BASE,
    ClassicPositionalEncoding,
    classic_div_term,
    classic_rows,
    diffusers_timestep_embedding,
    fairseq_sinusoidal_embedding,
    float32_ulps,
    oracle_encoding,
    tolerance,
)

# The C++ CPU kernel, the CUDA kernel body over a 132-multiprocessor grid, and the fallback.
VALUE_IMPLS = {name: IMPLS[name] for name in ("cpu", "grid_132sm", "fallback")}
# sin and cos of one float32 angle, each rounded by a different library (torch's vectorized Sleef for the classic
# module; pe_ext's own polynomials on the CPU), differ by at most this many float32 ulps.
SIN_COS_ULPS = 2


def pe_at(impl, positions, d_model, **encoding):
    """pe(positions) from impl: x = 0 (so out = pe exactly), one batch row."""
    x = torch.zeros(1, len(positions), d_model)
    return impl(x, None, 0, 1.0, BASE, 1, positions=torch.as_tensor(positions), **encoding)[0]


# --- The frequencies, bit for bit. A fresh encoding's values equal those computed from the frequencies given as a
# tensor (used as given) exactly; at positions 2^k the float32 angle is 2^k * freq, unrounded, so one ulp of any
# frequency changes it.
POWERS_OF_TWO = [1, 2**10, 2**16, 2**20]


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("d_model", [1, 2, 3, 7, 64, 100, 512, 1001, 2048, 8192])
def test_default_frequencies_are_the_classic_div_term_bit_for_bit(impl, d_model):
    div_term = classic_div_term(d_model)
    ours = pe_at(impl, POWERS_OF_TWO, d_model)
    assert torch.equal(ours, pe_at(impl, POWERS_OF_TWO, d_model, inv_freq=div_term))
    concatenated = pe_at(impl, POWERS_OF_TWO, d_model, layout="concatenated")
    assert torch.equal(concatenated, pe_at(impl, POWERS_OF_TWO, d_model, layout="concatenated",
                                           inv_freq=div_term[: d_model // 2]))
    # the comparison sees one ulp of one frequency
    if d_model >= 4:
        nudged = div_term.clone()
        nudged[1] = torch.nextafter(nudged[1], torch.tensor(1.0))
        assert not torch.equal(ours, pe_at(impl, POWERS_OF_TWO, d_model, inv_freq=nudged))


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("d_model", [4, 65, 512])
def test_timescales_are_fairseqs_and_correct_rounding_is_float64_rounded_once(impl, d_model):
    half_dim = d_model // 2  # fairseq's frequencies, as fairseq computes them
    fairseq = torch.exp(torch.arange(half_dim, dtype=torch.float) * -(math.log(10000) / (half_dim - 1)))
    timescales = {"frequencies": "timescales", "layout": "concatenated"}
    assert torch.equal(pe_at(impl, POWERS_OF_TWO, d_model, **timescales),
                       pe_at(impl, POWERS_OF_TWO, d_model, layout="concatenated", inv_freq=fairseq))
    rounded_once = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * -(math.log(BASE) / d_model)).float()
    assert torch.equal(pe_at(impl, POWERS_OF_TWO, d_model, frequency_rounding="correct"),
                       pe_at(impl, POWERS_OF_TWO, d_model, inv_freq=rounded_once))
    assert d_model < 512 or not torch.equal(rounded_once, classic_div_term(d_model))  # the roundings do differ


# --- Values against the classic module built by torch itself: (d_model, max_len), at most 1M values each,
# positions past 100k for narrow rows (wide rows far out: below); odd widths (where the classic module fails) take
# its first d_model // 2 cosines.
CLASSIC_TABLES = [(8, 131_072), (64, 8192), (100, 2048), (512, 1024), (1000, 512), (8192, 64), (1, 1000), (33, 1000),
                  (1001, 64)]


def classic_table(d_model, max_len):
    if d_model % 2 == 0:
        return ClassicPositionalEncoding(d_model, max_len).pe[0]
    return classic_rows(torch.arange(max_len), d_model)


@requires_extension
@pytest.mark.parametrize("d_model,max_len", CLASSIC_TABLES)
def test_tables_and_on_the_fly_values_equal_the_classic_module(d_model, max_len):
    classic = classic_table(d_model, max_len)
    built = {
        "table": pe_ext.sinusoidal_table(max_len, d_model),
        "on_the_fly": torch.ops.pe_ext.add_pe(torch.zeros(1, max_len, d_model), None, 0, 1.0, 1)[0],
        "fallback": pe_ext.sinusoidal.fallback.add_pe(torch.zeros(max_len, d_model), None, 0, 1.0, 0),
    }
    for name, values in built.items():
        assert float32_ulps(values, classic).max() <= SIN_COS_ULPS, name


@requires_testing_ops
@pytest.mark.parametrize("d_model,max_len", CLASSIC_TABLES[::2])
def test_cuda_kernel_body_equals_the_classic_module(d_model, max_len):
    """The CUDA per-thread body over its grid, building the table at 257 sampled rows (the last included)."""
    rows = torch.linspace(0, max_len - 1, 257).long()
    out = torch.full((len(rows), d_model), float("nan"))
    torch.ops.pe_ext._add_pe_grid_emulator(out, None, None, 0, 1.0, 0, 132, positions=rows)
    assert float32_ulps(out, classic_table(d_model, max_len)[rows]).max() <= SIN_COS_ULPS


FAR = [100_000, 100_001, 100_007, 131_071, 999_983, 2**24 + 2]


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("d_model", [512, 4096, 8192])
def test_wide_rows_far_out_equal_the_classic_formula(impl, d_model):
    assert float32_ulps(pe_at(impl, FAR, d_model), classic_rows(FAR, d_model)).max() <= SIN_COS_ULPS


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("buffer", ["table", "none"])
def test_every_dtype_against_the_classic_module(dtype, buffer):
    """float16/bfloat16: x + pe in float32, rounded once, so within one ulp of the classic sum rounded to dtype.
    float64 with a table: the float32 table's values, within the sin/cos rounding of the classic one's; float64 on the
    fly: float64 math, more accurate than the classic module (against the float64 oracle)."""
    d_model, seq_len = 64, 1024
    classic = ClassicPositionalEncoding(d_model, seq_len)
    x = torch.randn(2, seq_len, d_model).to(dtype)
    ours = pe_ext.PositionalEncoding(d_model, seq_len, buffer=buffer)(x)
    assert ours.dtype == dtype
    if dtype != torch.float64:
        expected = classic(x.float()).to(dtype)
        one_ulp = torch.finfo(dtype)  # relative, and the subnormals' spacing
        torch.testing.assert_close(ours.float(), expected.float(), atol=one_ulp.tiny * one_ulp.eps, rtol=one_ulp.eps)
    elif buffer == "table":
        torch.testing.assert_close(ours, classic(x), atol=SIN_COS_ULPS * 2.0**-24, rtol=0)
    else:
        truth = x + oracle_encoding(torch.arange(seq_len), d_model)
        torch.testing.assert_close(ours, truth, atol=1e-12, rtol=0)


# --- Positions beyond 0, 1, 2, ...: fractional, negative, and user-given frequencies, against the float64 oracle.


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["interleaved", "concatenated_cos_first"])
def test_fractional_and_negative_positions(impl, dtype, layout):
    gen = torch.Generator().manual_seed(5)
    positions = (torch.rand(3, 40, generator=gen, dtype=torch.float64) - 0.3) * 2000  # -600 .. 1400, fractional
    x = torch.randn(3, 40, 24, generator=gen).to(dtype)
    as_given = positions.to(dtype)  # float32 positions for float32 data, as a model would hold them
    out = impl(x, None, 7, 1.0, BASE, 1, positions=as_given, layout=layout)
    expected = x.double() + oracle_encoding(as_given.double().reshape(-1) + 7, 24, layout=layout).reshape(3, 40, 24)
    atol, rtol = tolerance(dtype, 1410, 4.0)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    far = as_given * 1000  # -600k .. 1.4M: the float32 angle would be off by ~0.1 there
    precise = impl(x, None, 7, 1.0, BASE, 1, positions=far, layout=layout, precise_angle=True)
    expected = x.double() + oracle_encoding(far.double().reshape(-1) + 7, 24, layout=layout).reshape(3, 40, 24)
    torch.testing.assert_close(precise.double(), expected, atol=1e-6 + 4 * tolerance(dtype, 0)[1], rtol=0)


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
def test_relative_positions_and_negative_offsets(impl):
    """Transformer-XL's and Conformer's relative positions L-1 ... -(L-1), and a negative offset: sin is odd, cos
    even."""
    seq_len, d_model = 50, 32
    relative = torch.arange(seq_len - 1, -seq_len, -1)
    x = torch.zeros(1, len(relative), d_model)
    atol, rtol = tolerance(torch.float32, seq_len)
    torch.testing.assert_close(impl(x, None, 0, 1.0, BASE, 1, positions=relative)[0].double(),
                               oracle_encoding(relative, d_model), atol=atol, rtol=rtol)
    torch.testing.assert_close(impl(x, None, -40, 1.0, BASE, 1)[0].double(),
                               oracle_encoding(torch.arange(-40, -40 + len(relative)), d_model), atol=atol, rtol=rtol)
    table = pe_ext.sinusoidal_table(2 * seq_len - 1, d_model, offset=-(seq_len - 1))  # rows -(L-1) .. L-1
    torch.testing.assert_close(table.double(), oracle_encoding(relative.flip(0), d_model), atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("given_dtype", [torch.float32, torch.float64], ids=str)
def test_user_frequencies_are_used_as_given(impl, given_dtype):
    """A model's own inv_freq (Hugging Face's 1 / base^(2i/d) with base 500): the angle is the float32 product of
    the given frequency (rounded to float32 first) with the position."""
    d_model, base = 40, 500.0
    inv_freq = (1.0 / (base ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model))).to(given_dtype)
    positions = torch.arange(0, 3000, 7)
    out = pe_at(impl, positions, d_model, inv_freq=inv_freq)
    used = inv_freq.float().double()
    angle = positions.double()[:, None] * used[None, :]
    truth = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(len(positions), d_model)
    atol, rtol = tolerance(torch.float32, 3000)
    torch.testing.assert_close(out.double(), truth, atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", VALUE_IMPLS.values(), ids=VALUE_IMPLS.keys())
@pytest.mark.parametrize("dim", [32, 33])
def test_diffusers_timestep_embedding_with_its_own_frequencies(impl, dim):
    """diffusers' get_timestep_embedding (flip_sin_to_cos, as Stable Diffusion's UNet): fractional timesteps, the
    cos-first layout and diffusers' frequencies given as a tensor: equal to the sin/cos rounding."""
    timesteps = torch.tensor([0.0, 0.5, 1.0, 17.25, 999.0, 981.3333])
    theirs, freqs = diffusers_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    ours = pe_at(impl, timesteps, dim, layout="concatenated_cos_first", inv_freq=freqs)
    assert float32_ulps(ours, theirs).max() <= SIN_COS_ULPS


def test_public_functions_take_frequencies_as_a_tensor():
    timesteps = torch.tensor([0.0, 0.5, 17.25, 999.0])
    theirs, freqs = diffusers_timestep_embedding(timesteps, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    ours = pe_ext.sinusoidal_embedding(timesteps, 32, layout="concatenated_cos_first", frequencies=freqs)
    assert float32_ulps(ours, theirs).max() <= SIN_COS_ULPS
    x = torch.randn(2, 4, 32)
    by_function = pe_ext.add_sinusoidal_pe(x, positions=timesteps, layout="concatenated_cos_first", frequencies=freqs)
    assert torch.equal(by_function, x + ours)


@pytest.mark.parametrize("d_model", [16, 17])
def test_fairseq_embedding_to_sin_cos_rounding(d_model):
    ours = pe_ext.sinusoidal_table(1024, d_model, frequencies="timescales", layout="concatenated")
    assert float32_ulps(ours, fairseq_sinusoidal_embedding(1024, d_model)).max() <= SIN_COS_ULPS


def test_module_keeps_given_frequencies_in_their_dtype():
    """.half() would round the frequencies, and with them every angle; the module keeps them as given."""
    div_term = classic_div_term(64)
    module = pe_ext.PositionalEncoding(64, 300, buffer="none", frequencies=div_term).half()
    assert module.inv_freq.dtype == torch.float32 and "inv_freq" not in module.state_dict()
    x = torch.randn(2, 300, 64).half()
    expected = (x.float() + ClassicPositionalEncoding(64, 300).pe).half()
    torch.testing.assert_close(module(x).float(), expected.float(), atol=0, rtol=torch.finfo(torch.float16).eps)
    assert module.to("meta").inv_freq.is_meta
