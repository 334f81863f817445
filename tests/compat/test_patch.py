"""pe_ext.patch(model) on sinusoidal position modules: tiny randomly initialized Hugging Face models (built from
configs, no downloads) give the same outputs and generations patched; the projects' classes (re-implementations
named as the projects' classes) and modules holding the classic `pe` buffer are recognized and swapped for
pe_ext.compat's; names, dry runs, undo, shared modules, and modules left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pe_ext
from pe_ext.compat import detr, diffusers, espnet, fairseq, hf, xtransformers
from tests.compat import reimpl
from tests.compat.common import BACKENDS, served_by, ulps

transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 48, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "pad_token_id": 1,
        "eos_token_id": 2, "decoder_start_token_id": 3}
DECODER_IDS = torch.tensor([[3, 5, 6], [3, 7, 8]])
POSITIONS = ["model.encoder.embed_positions", "model.decoder.embed_positions"]


def _same_outputs_patched(model, inputs: dict, generate_inputs: dict | None, names: list[str]):
    """Outputs (and greedy generations, which decode with the KV cache) equal before, while and after a patch."""
    model.eval()
    with torch.no_grad():
        before = model(**inputs, decoder_input_ids=DECODER_IDS).logits
    generated = model.generate(**generate_inputs, max_new_tokens=5, do_sample=False) if generate_inputs else None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    patch = pe_ext.patch(model)
    assert patch.names == names
    assert sorted(model.state_dict()) == sorted(state)
    with torch.no_grad():
        patched = model(**inputs, decoder_input_ids=DECODER_IDS).logits
    assert ulps(patched, before, 1.0) <= 64  # logits of a 1-layer model, from inputs within 1 ulp
    if generate_inputs:
        assert torch.equal(model.generate(**generate_inputs, max_new_tokens=5, do_sample=False), generated)
    patch.undo()
    with torch.no_grad():
        assert torch.equal(model(**inputs, decoder_input_ids=DECODER_IDS).logits, before)
    return patch


def test_marian():
    model = transformers.MarianMTModel(transformers.MarianConfig(**TINY, max_position_embeddings=40))
    ids = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 2, 1]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 1).long()}
    _same_outputs_patched(model, inputs, inputs, POSITIONS)


def test_m2m100_with_padding_and_cached_generation():
    model = transformers.M2M100ForConditionalGeneration(transformers.M2M100Config(**TINY,
                                                                                 max_position_embeddings=40))
    ids = torch.tensor([[5, 6, 7, 8, 2], [1, 1, 9, 10, 2]])  # left padding: positions skip it
    inputs = {"input_ids": ids, "attention_mask": (ids != 1).long()}
    patch = _same_outputs_patched(model, inputs, inputs, POSITIONS)
    assert isinstance(patch.swaps[0].replacement, transformers.models.m2m_100.modeling_m2m_100.
                      M2M100SinusoidalPositionalEmbedding)


def test_speech2text():
    config = transformers.Speech2TextConfig(**TINY, input_feat_per_channel=8, input_channels=1, conv_channels=16,
                                            num_conv_layers=1, conv_kernel_sizes=[5], max_source_positions=40,
                                            max_target_positions=40)
    model = transformers.Speech2TextForConditionalGeneration(config)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0
    inputs = {"input_features": torch.randn(2, 20, 8), "attention_mask": mask}
    _same_outputs_patched(model, inputs, inputs, POSITIONS)


def test_whisper_encoder():
    config = transformers.WhisperConfig(**TINY, num_mel_bins=8,
                                        max_source_positions=10, max_target_positions=32)
    model = transformers.WhisperForConditionalGeneration(config)
    _same_outputs_patched(model, {"input_features": torch.randn(2, 8, 20)}, None, ["model.encoder.embed_positions"])


# (family, class, calls): rows the table holds (read from it) and rows past it (computed by pe_ext's kernel, where
# the original grows its table, or fails: TrOCR's bound leaves out cache_length), or given position ids (computed).
# The expected values come from the same class with a table holding every row.
HF_MODULES = [
    ("xglm", "XGLMSinusoidalPositionalEmbedding", [(torch.arange(6).expand(2, -1), 3), (torch.arange(90, 96)[None], 90)]),
    ("trocr", "TrOCRSinusoidalPositionalEmbedding", [(torch.tensor([[1, 5, 6, 7]]), 2),
                                                     (torch.tensor([[1, 5, 6, 7]]), 100)]),
    ("nllb_moe", "NllbMoeSinusoidalPositionalEmbedding", [(torch.tensor([[1, 5, 6, 7]]), None, 2),
                                                          (torch.tensor([[1, 5, 6, 7]]), None, 100)]),
    ("pegasus", "PegasusSinusoidalPositionalEmbedding", [((2, 6), 3), ((1, 6), 0, torch.arange(20, 26))]),
]


@pytest.mark.parametrize("family,name,calls", HF_MODULES, ids=[f for f, *_ in HF_MODULES])
def test_other_hugging_face_modules(family, name, calls):
    cls = getattr(getattr(transformers.models, family), f"modeling_{family}").__dict__[name]
    original, every_row = cls(32, 13, 1), cls(256, 13, 1)
    if family == "pegasus":  # its model's initialization fills the table
        with torch.no_grad():
            for module in (original, every_row):
                module.weight.copy_(module.create_weight())
    holder = nn.Sequential(original)
    expected = [every_row(*args) for args in calls]
    patch = pe_ext.patch(holder)
    assert patch.names == ["0"] and holder[0] is not original
    for args, theirs in zip(calls, expected):
        assert ulps(holder[0](*args), theirs) <= 2


# --- The tables, against Hugging Face's own code.

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [16, 17])
def test_tables_equal_hugging_faces(backend, dim):
    m2m100 = transformers.models.m2m_100.modeling_m2m_100.M2M100SinusoidalPositionalEmbedding
    marian = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(3000, dim)
    far = torch.tensor([0, 1, 2, 99_998, 99_999])
    with served_by(backend):
        assert ulps(hf.fairseq_style_table(3000, dim, 1), m2m100.get_embedding(3000, dim, 1)) <= 2
        # even widths: float32 sin/cos of the angle reduced in float64; odd: float64 sin/cos rounded once
        assert ulps(hf.marian_table(3000, dim), marian.create_weight()) <= (1 if dim % 2 == 0 else 0.5)
        assert ulps(hf.marian_rows(far, dim), reimpl.marian_rows(far, dim)) <= (1 if dim % 2 == 0 else 0.5)
        if dim % 2 == 0:
            sinusoids = transformers.models.whisper.modeling_whisper.sinusoids
            assert ulps(hf.whisper_sinusoids(1500, dim), sinusoids(1500, dim)) <= 2


# --- The projects' classes and the classic `pe` buffer.

STAND_INS = [
    (reimpl.as_project_class(reimpl.EspnetPositionalEncoding, reimpl.ESPNET, "PositionalEncoding"), (16, 0.1, 64),
     espnet.PositionalEncoding),
    (reimpl.as_project_class(reimpl.EspnetScaledPositionalEncoding, reimpl.ESPNET, "ScaledPositionalEncoding"),
     (16, 0.1, 64), espnet.ScaledPositionalEncoding),
    (reimpl.as_project_class(reimpl.EspnetRelPositionalEncoding, reimpl.ESPNET, "RelPositionalEncoding"),
     (16, 0.1, 64), espnet.RelPositionalEncoding),
    (reimpl.as_project_class(reimpl.EspnetLegacyRelPositionalEncoding, reimpl.ESPNET, "LegacyRelPositionalEncoding"),
     (16, 0.1, 64), espnet.LegacyRelPositionalEncoding),
    (reimpl.as_project_class(reimpl.EspnetStreamPositionalEncoding, reimpl.ESPNET, "StreamPositionalEncoding"),
     (16, 0.1, 64), espnet.StreamPositionalEncoding),
    (reimpl.as_project_class(reimpl.FairseqSinusoidalPositionalEmbedding, reimpl.FAIRSEQ,
                             "SinusoidalPositionalEmbedding"), (16, 1), fairseq.SinusoidalPositionalEmbedding),
    (reimpl.as_project_class(reimpl.DiffusersTimesteps, reimpl.DIFFUSERS, "Timesteps"), (32, True, 0),
     diffusers.Timesteps),
    (reimpl.as_project_class(reimpl.XTransformersScaledSinusoidalEmbedding, reimpl.XTRANSFORMERS,
                             "ScaledSinusoidalEmbedding"), (16,), xtransformers.ScaledSinusoidalEmbedding),
    (reimpl.as_project_class(reimpl.DetrPositionEmbeddingSine, reimpl.DETR, "PositionEmbeddingSine"), (32, 10000, True),
     detr.PositionEmbeddingSine),
    (reimpl.TutorialPositionalEncoding, (16, 0.1, 64), pe_ext.PositionalEncoding),
    (reimpl.BatchFirstPositionalEncoding, (16, 64), pe_ext.PositionalEncoding),
]


@pytest.mark.parametrize("cls,args,expected", STAND_INS, ids=[f"{c.__module__}.{c.__name__}" for c, *_ in STAND_INS])
def test_recognized_modules_are_swapped_with_their_state(cls, args, expected):
    model = nn.Sequential(nn.Identity(), cls(*args)).train()
    original = model[1]
    assert pe_ext.patch(model, dry_run=True).names == ["1"] and model[1] is original
    patch = pe_ext.patch(model)
    assert patch.names == ["1"] and isinstance(model[1], expected) and model[1].training
    assert sorted(model.state_dict()) == sorted(nn.Sequential(nn.Identity(), original).state_dict())
    for name, parameter in original.named_parameters():
        assert model[1].get_parameter(name) is parameter  # shared: an optimizer keeps training it
    patch.undo()
    assert model[1] is original


def test_classic_modules_keep_their_table_and_convention():
    model = nn.ModuleDict({"tutorial": reimpl.TutorialPositionalEncoding(8, 0.0, 40),
                           "seed": reimpl.BatchFirstPositionalEncoding(8, 40)}).eval()
    with torch.no_grad():
        model["seed"].pe.mul_(0.5)  # a table no formula gives: carried over as it is
    x = torch.randn(2, 30, 8)
    expected = model["tutorial"](x.transpose(0, 1)), model["seed"](x)
    pe_ext.patch(model)
    assert isinstance(model["seed"], pe_ext.PositionalEncoding)
    assert torch.equal(model["seed"](x), expected[1])
    assert ulps(model["tutorial"](x.transpose(0, 1)), expected[0], x.transpose(0, 1)) <= 2
    assert model.state_dict()["tutorial.pe"].shape == (40, 1, 8)


def test_a_module_under_two_names_is_replaced_under_both():
    shared = reimpl.BatchFirstPositionalEncoding(8, 16)
    model = nn.ModuleDict({"encoder": nn.Sequential(shared), "decoder": nn.Sequential(shared)})
    patch = pe_ext.patch(model)
    assert patch.names == ["encoder.0", "decoder.0"] and model["encoder"][0] is model["decoder"][0]


def test_modules_that_differ_are_left_alone_with_a_warning():
    marian = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(16, 8)
    with torch.no_grad():
        marian.weight.copy_(marian.create_weight())
        marian.weight[15, 3] += 0.01  # the last row, as a fine-tuned checkpoint might hold
    other = reimpl.BatchFirstPositionalEncoding(8, 16)
    other.forward = lambda x: x * 2 + other.pe[:, : x.size(1)]  # holds `pe`, computes something else
    model = nn.ModuleDict({"marian": marian, "other": other, "linear": nn.Linear(8, 8)})
    with pytest.warns(UserWarning, match="left marian"), pytest.warns(UserWarning, match="left other"):
        assert pe_ext.patch(model).names == []
    assert model["marian"] is marian and model["other"] is other
