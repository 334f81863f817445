"""Frequency conventions, layouts and the precise angle, on every implementation, against the float64 oracle."""

from __future__ import annotations

import math

import pytest
import torch

import pe_ext
from tests.sinusoidal.impls import IMPLS
from tests.sinusoidal.oracle import fairseq_sinusoidal_embedding, oracle_encoding, tolerance

ENCODINGS = {
    "paper_interleaved": {},
    "paper_concatenated": {"layout": "concatenated"},
    "timescales_concatenated": {"frequencies": "timescales", "layout": "concatenated"},
    "timescales_interleaved": {"frequencies": "timescales", "min_timescale": 2.0, "max_timescale": 500.0},
}


def oracle_for(positions, d_model, encoding):
    return oracle_encoding(positions, d_model, **encoding)


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("d_model", [1, 2, 3, 7, 36, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_on_the_fly_conventions_match_oracle(impl, encoding, d_model, dtype):
    x = torch.randn(3, 20, d_model).to(dtype)
    out = impl(x, None, 5, 1.0, 10000.0, 1, **encoding)
    expected = x.double() + oracle_for(torch.arange(5, 25), d_model, encoding).unsqueeze(0)
    atol, rtol = tolerance(dtype, 25, 4.0)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("d_model", [3, 36, 64])
def test_tables_follow_the_convention_and_feed_the_table_mode(encoding, d_model):
    table = pe_ext.sinusoidal_table(40, d_model, **encoding)
    atol, rtol = tolerance(torch.float32, 40)
    torch.testing.assert_close(table.double(), oracle_for(torch.arange(40), d_model, encoding), atol=atol, rtol=rtol)
    x = torch.randn(2, 30, d_model)
    torch.testing.assert_close(pe_ext.add_sinusoidal_pe(x, table, offset=10, **encoding),
                               (x.double() + table[10:].double()).float(), atol=0, rtol=0)


@pytest.mark.parametrize("d_model", [8, 64, 65])
def test_fairseq_convention_matches_fairseq_code(d_model):
    ours = pe_ext.sinusoidal_table(1024, d_model, frequencies="timescales", layout="concatenated")
    theirs = fairseq_sinusoidal_embedding(1024, d_model)
    angle_ulp = torch.arange(1024.0).unsqueeze(1) * 2.0**-23  # both round the float32 angle
    assert ((ours - theirs).abs() <= 4 * angle_ulp + 1e-6).all()


def test_half_d_model_one_is_defined():
    """d_model 2 or 3 has one frequency: tensor2tensor's max(d/2 - 1, 1) instead of a division by zero."""
    for d_model in (2, 3):
        table = pe_ext.sinusoidal_table(5, d_model, frequencies="timescales", layout="concatenated")
        assert torch.isfinite(table).all()
        torch.testing.assert_close(table[:, 0], torch.sin(torch.arange(5.0)))


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("start", [0, 300_000, 1_000_000, 16_000_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_precise_angle_stays_under_1e6_to_16m_positions(impl, start, dtype):
    d_model, length = 64, 512
    x = torch.zeros(1, length, d_model, dtype=dtype)
    out = impl(x, None, start, 1.0, 10000.0, 1, precise_angle=True)
    truth = oracle_encoding(torch.arange(start, start + length), d_model)
    assert (out[0].double() - truth).abs().max() < 1e-6


def test_default_angle_is_the_classic_float32_one_and_loses_accuracy_far_out():
    """Why precise_angle exists: at 300k the default float32 angle is off by ~1e-2, as the classic table is."""
    x = torch.zeros(1, 512, 64)
    truth = oracle_encoding(torch.arange(300_000, 300_512), 64)
    default = pe_ext.add_sinusoidal_pe(x, offset=300_000)[0].double()
    precise = pe_ext.add_sinusoidal_pe(x, offset=300_000, precise_angle=True)[0].double()
    assert (default - truth).abs().max() > 1e-3
    assert (precise - truth).abs().max() < 1e-6


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("start", [0, 123_457, 2**40 + 7, 2**50 - 3, 2**60 + 11])
def test_default_angle_sin_and_cos_are_within_two_ulps_at_any_position(impl, start):
    """pe is sin and cos of the float32 angle float(pos) * float(freq), however far out: the CPU kernel evaluates them
    with its own polynomials below 2^50 and with the library's above (rows around 2^50 - 3 take both)."""
    d_model, length = 16, 6
    x = torch.zeros(1, length, d_model)
    out = impl(x, None, start, 1.0, 10000.0, 1)[0].double()
    positions = torch.tensor([start + l for l in range(length)], dtype=torch.float64)
    freqs = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))  # the classic div_term
    angles = (positions.float()[:, None] * freqs[None, :]).double()  # the classic float32 product
    truth = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(length, d_model)
    torch.testing.assert_close(out, truth, atol=1.2e-7, rtol=0)  # 2 ulps of values in [0.5, 1)


def float32_angles(count, generator):
    """float32 angles up to 2^20: random ones, and those nearest k * pi/2, whose sin or cos is tiny (there a wrong
    reduction costs many ulps)."""
    random = torch.rand(count // 2, generator=generator, dtype=torch.float64) * 2**20
    near_quadrants = torch.randint(1, 2**19, (count - count // 2,), generator=generator).double() * (math.pi / 2)
    return torch.cat([random, near_quadrants]).float()


LAYOUT_TRUTH = {  # where the layouts put sin and cos of their frequencies (d_model even)
    "interleaved": lambda s, c: torch.stack([s, c], dim=-1).reshape(-1),
    "concatenated": lambda s, c: torch.cat([s, c]),
    "concatenated_cos_first": lambda s, c: torch.cat([c, s]),
}


@pytest.mark.parametrize("layout", LAYOUT_TRUTH.keys())
@pytest.mark.parametrize("num_freqs", [1, 7, 8, 9, 23, 255, 256, 257, 1000])
def test_cpu_sin_and_cos_are_rounded_within_half_an_ulp(layout, num_freqs):
    """The CPU kernel's float32 sin and cos (its own polynomials, in 512-bit vectors where the CPU has AVX-512, in the
    compiled loop elsewhere) are the float64 values rounded, within 0.501 ulp: runs of every length around the vector
    width (8) and the 256 angles a row is computed in, each layout, and an odd row whose last frequency has a sin
    only. The angles are the frequencies themselves (position 1), so that each is a float32 angle chosen here."""
    angles = float32_angles(num_freqs, torch.Generator().manual_seed(num_freqs))
    d_model = 2 * num_freqs - (layout == "interleaved")  # odd interleaved: the last frequency's sin column only
    out = pe_ext.add_sinusoidal_pe(torch.zeros(1, 1, d_model), offset=1, inv_freq=angles, layout=layout)[0, 0]
    truth = LAYOUT_TRUTH[layout](angles.double().sin(), angles.double().cos())[:d_model]
    rounded = truth.float().abs()
    ulp = (torch.nextafter(rounded, torch.tensor(math.inf)) - rounded).double()
    assert ((out.double() - truth).abs() / ulp).max() <= 0.501


@pytest.mark.parametrize("bad,match", [({"layout": "zigzag"}, "layout"), ({"frequencies": "random"}, "frequencies"),
                                       ({"frequencies": "timescales", "min_timescale": 0.0}, "min_timescale"),
                                       ({"frequencies": "timescales", "min_timescale": 5.0, "max_timescale": 1.0},
                                        "max_timescale")])
@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
def test_bad_encodings_are_refused(impl, bad, match):
    with pytest.raises(ValueError, match=match):
        impl(torch.randn(1, 4, 8), None, 0, 1.0, 10000.0, 1, **bad)


def test_module_with_fairseq_style_encoding():
    module = pe_ext.PositionalEncoding(64, max_len=128, frequencies="timescales", layout="concatenated")
    x = torch.randn(2, 128, 64)
    atol, rtol = tolerance(torch.float32, 128, 4.0)
    torch.testing.assert_close(module(x).double(), x.double() + oracle_encoding(
        torch.arange(128), 64, frequencies="timescales", layout="concatenated"), atol=atol, rtol=rtol)
    with pytest.raises(ValueError, match="layout"):
        pe_ext.PositionalEncoding(64, layout="zigzag")
