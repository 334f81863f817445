"""Each compat layer's values against the independent re-implementation of its project (tests/compat/reimpl.py), in
eval mode, at positions up to 100k, on every implementation of pe_ext's ops: the C++ kernels, the CUDA kernel body
over its grid on the CPU, and the fallback. Within 2 float32 ulps (of 1 for values of magnitude <= 1, of the largest
term for a sum): sin and cos of the same float32 angle, rounded by two libraries, differ by at most that."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pe_ext.compat import detr, diffusers, espnet, fairseq, mae, t2t, tutorial, xtransformers
from tests.compat import reimpl
from tests.compat.common import BACKENDS, served_by, ulps

ULPS = 2
FAR = 99_950  # offsets that put the sequences' last positions near 100k
pytestmark = pytest.mark.parametrize("backend", BACKENDS)


def test_tutorial(backend):
    with served_by(backend):
        ours = tutorial.PositionalEncoding(12, 0.1, 100_001).eval()
        theirs = reimpl.TutorialPositionalEncoding(12, 0.1, 100_001).eval()
        rows = torch.cat([torch.arange(64), torch.randint(0, 100_001, (200,)), torch.tensor([100_000])])
        assert ulps(ours.pe[0, rows], theirs.pe[rows, 0]) <= ULPS
        x = torch.randn(40, 3, 12)  # seq-first
        assert ulps(ours(x), theirs(x), x) <= ULPS


@pytest.mark.parametrize("reverse", [False, True])
def test_espnet_positional_encoding_grows_and_reverses_as_espnet(backend, reverse):
    with served_by(backend):
        ours = espnet.PositionalEncoding(12, 0.1, 64, reverse=reverse).eval()
        theirs = reimpl.EspnetPositionalEncoding(12, 0.1, 64, reverse=reverse).eval()
        for seq_len in (10, 100, 30, 300):  # growing past max_len, then shorter: reverse counts from the longest
            x = torch.randn(2, seq_len, 12)
            assert ulps(ours(x), theirs(x), x * math.sqrt(12)) <= ULPS


def test_espnet_scaled_and_streaming(backend):
    with served_by(backend):
        ours, theirs = espnet.ScaledPositionalEncoding(12, 0.1, 64).eval(), \
            reimpl.EspnetScaledPositionalEncoding(12, 0.1, 64).eval()
        with torch.no_grad():
            ours.alpha.fill_(0.7)
            theirs.alpha.fill_(0.7)
        x = torch.randn(2, 80, 12)
        assert ulps(ours(x), theirs(x), x) <= ULPS
        ours, theirs = espnet.StreamPositionalEncoding(12, 0.1, 64).eval(), \
            reimpl.EspnetStreamPositionalEncoding(12, 0.1, 64).eval()
        for start in (0, 17, FAR):
            x = torch.randn(2, 40, 12)
            assert ulps(ours(x, start), theirs(x, start), x * math.sqrt(12)) <= ULPS


@pytest.mark.parametrize("kind", ["LegacyRelPositionalEncoding", "RelPositionalEncoding"])
def test_espnet_relative(backend, kind):
    with served_by(backend):
        ours = getattr(espnet, kind)(12, 0.1, 64).eval()
        theirs = getattr(reimpl, "Espnet" + kind)(12, 0.1, 64).eval()
        for seq_len in (10, 100, 30):
            x = torch.randn(2, seq_len, 12)
            (x_ours, emb_ours), (x_theirs, emb_theirs) = ours(x), theirs(x)
            assert emb_ours.shape == emb_theirs.shape
            assert ulps(x_ours, x_theirs, x * math.sqrt(12)) <= ULPS and ulps(emb_ours, emb_theirs) <= ULPS


def test_espnet_relative_far(backend):
    """The relative table at positions +-(100k - 1): the table is built for the longest input (8 columns)."""
    with served_by(backend):
        ours, theirs = espnet.RelPositionalEncoding(8, 0.0, 100_000), reimpl.EspnetRelPositionalEncoding(8, 0.0, 10)
        assert ulps(ours.pe[0, [0, 1, 99_999, -2, -1]], reimpl.paper_rows(torch.tensor(
            [99_999, 99_998, 0, -99_998, -99_999]), 8)) <= ULPS
        x = torch.randn(1, 20, 8)
        assert ulps(ours(x)[1], theirs(x)[1]) <= ULPS


@pytest.mark.parametrize("padding_idx", [1, None])
def test_fairseq(backend, padding_idx):
    with served_by(backend):
        ours = fairseq.SinusoidalPositionalEmbedding(13, padding_idx)
        theirs = reimpl.FairseqSinusoidalPositionalEmbedding(13, padding_idx, init_size=100_100)
        pad = 0 if padding_idx is None else padding_idx
        tokens = torch.tensor([[pad, pad, 5, 6, 7], [5, 6, 7, 8, pad]])
        assert ulps(ours(tokens), theirs(tokens)) <= ULPS
        for step in (None, torch.tensor([3]), torch.tensor([FAR])):
            assert ulps(ours(tokens, {}, step), theirs(tokens, {}, step)) <= ULPS
        short = fairseq.SinusoidalPositionalEmbedding(13, padding_idx, init_size=4)  # rows past it: computed
        assert ulps(short(tokens), theirs(tokens)) <= ULPS
        table = fairseq.SinusoidalPositionalEmbedding.get_embedding(1500, 13, padding_idx)
        assert ulps(table, reimpl.fairseq_table(1500, 13, padding_idx)) <= ULPS


@pytest.mark.parametrize("args", [(50, 13), (50, 16, 1.0, 1.0e4, FAR), (20, 10, 2.0, 500.0, 7), (6, 1)])
def test_t2t_signal(backend, args):
    with served_by(backend):
        assert ulps(t2t.get_timing_signal_1d(*args), reimpl.t2t_signal(*args)) <= ULPS


def test_t2t_add(backend):
    with served_by(backend):
        x = torch.randn(2, 30, 16)
        expected = x + reimpl.t2t_signal(30, 16, 2.0, 500.0, FAR)  # tensor2tensor's min_timescale * exp(...)
        assert ulps(t2t.add_timing_signal_1d(x, 2.0, 500.0, FAR), expected, x) <= ULPS


TIMESTEPS = torch.tensor([0.0, 0.5, 1.0, 17.25, 999.0, 981.3333, 0.001, 99_999.5])


@pytest.mark.parametrize("options", [{}, {"flip_sin_to_cos": True, "downscale_freq_shift": 0}, {"scale": 4},
                                     {"scale": 1000, "flip_sin_to_cos": True}, {"max_period": 500}],
                         ids=["default", "flip", "scale4", "scale1000", "period500"])
@pytest.mark.parametrize("dim", [32, 33])
def test_diffusers(backend, options, dim):
    with served_by(backend):
        ours = diffusers.get_timestep_embedding(TIMESTEPS, dim, **options)
        assert ulps(ours, reimpl.diffusers_embedding(TIMESTEPS, dim, **options)) <= ULPS


def test_diffusers_timesteps_module_with_integer_timesteps(backend):
    with served_by(backend):
        steps = torch.arange(0, 1000, 7)
        assert ulps(diffusers.Timesteps(32, True, 0)(steps), reimpl.DiffusersTimesteps(32, True, 0)(steps)) <= ULPS


def test_xtransformers(backend):
    with served_by(backend):
        ours, theirs = xtransformers.ScaledSinusoidalEmbedding(32), reimpl.XTransformersScaledSinusoidalEmbedding(32)
        x = torch.zeros(2, 40, 32)
        for kwargs in ({}, {"offset": FAR}, {"seq_start_pos": torch.tensor(5)}, {"pos": torch.arange(40) * 2500}):
            assert ulps(ours(x, **kwargs), theirs(x, **kwargs)) <= ULPS


@pytest.mark.parametrize("normalize", [False, True])
def test_detr(backend, normalize):
    with served_by(backend):
        mask = torch.zeros(2, 20, 30, dtype=torch.bool)
        mask[1, 14:], mask[1, :, 21:] = True, True  # the second image is 14 x 21, padded
        images = detr.NestedTensor(torch.zeros(2, 3, 20, 30), mask)
        ours = detr.PositionEmbeddingSine(32, normalize=normalize)(images)
        theirs = reimpl.DetrPositionEmbeddingSine(32, normalize=normalize)(images)
        assert ours.shape == theirs.shape and ours.stride() == theirs.stride()  # channels-first views alike
        assert ulps(ours, theirs) <= ULPS
        assert torch.equal(detr.PositionEmbeddingSine(32, normalize=normalize)(images.tensors, mask), ours)
        # the distinct counts' rows, gathered (the CPU's way), equal every element's own (the GPU's)
        values, periods = torch.rand(3, 7, 2) * 50, torch.linspace(1, 900, 16)
        values[1] = values[0]
        assert torch.equal(detr.sin_cos_of_quotients(values, periods, distinct=True),
                           detr.sin_cos_of_quotients(values, periods, distinct=False))


def test_detr_far_rows(backend):
    """Image rows up to 100k (a 100000 x 1 image): angles up to 1e5 / period."""
    with served_by(backend):
        mask = torch.zeros(1, 100_000, 1, dtype=torch.bool)
        images = detr.NestedTensor(torch.zeros(1, 1, 100_000, 1), mask)
        rows = slice(FAR, None)
        ours = detr.PositionEmbeddingSine(8)(images)[..., rows, :]
        assert ulps(ours, reimpl.DetrPositionEmbeddingSine(8)(images)[..., rows, :]) <= ULPS


@pytest.mark.parametrize("cls_token", [False, True])
def test_mae(backend, cls_token):
    """float64 throughout: the same float64 angles; sin and cos by the C library and by NumPy."""
    with served_by(backend):
        ours = mae.get_2d_sincos_pos_embed(64, 14, cls_token)
        theirs = reimpl.mae_2d(64, 14, cls_token)
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 4 * np.finfo(np.float64).eps
        # rounded to float32 as MAE's models load it: the same
        assert np.array_equal(ours.astype(np.float32), theirs.astype(np.float32))
