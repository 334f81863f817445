#!/usr/bin/env python3
"""Swap pe_ext into a Hugging Face model with sinusoidal positions (Marian) and show its output is unchanged.

MarianSinusoidalPositionalEmbedding stores a (num_positions, d_model) table: paper frequencies, the concatenated
layout (all sin, then all cos), computed in float64 and rounded to float32. pe_ext.sinusoidal_embedding computes
the same rows on the fly with layout="concatenated" and precise_angle=True (the angle in double), for any length.
A tiny randomly initialised model is enough to show it: nothing is downloaded.

    python examples/huggingface_marian.py
"""

import sys
from pathlib import Path

import torch
from torch import nn
from transformers import MarianConfig, MarianMTModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pe_ext


class PeExtMarianPositions(nn.Module):
    """Same call as MarianSinusoidalPositionalEmbedding.forward, no table."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim

    def forward(self, input_ids_shape, cache_length=0, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(cache_length, cache_length + input_ids_shape[1])
        return pe_ext.sinusoidal_embedding(position_ids, self.embedding_dim, layout="concatenated",
                                           precise_angle=True)


def main():
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=200, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                          max_position_embeddings=512, pad_token_id=0, decoder_start_token_id=0)
    model = MarianMTModel(config).eval()
    input_ids = torch.randint(1, 200, (2, 300))
    decoder_input_ids = torch.randint(1, 200, (2, 200))
    with torch.no_grad():
        expected = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        hf_table = model.model.encoder.embed_positions.weight.clone()
        model.model.encoder.embed_positions = PeExtMarianPositions(config.d_model)
        model.model.decoder.embed_positions = PeExtMarianPositions(config.d_model)
        got = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    rows = pe_ext.sinusoidal_embedding(torch.arange(512), config.d_model, layout="concatenated", precise_angle=True)
    print(f"pe_ext backend: {pe_ext.backend()}")
    print(f"max |HF table - pe_ext rows| over 512 positions: {(hf_table - rows).abs().max().item():.3e}")
    diff = (expected - got).abs().max().item()
    print(f"max |HF - pe_ext| over logits of shape {tuple(got.shape)}: {diff:.3e}")
    assert (hf_table - rows).abs().max().item() < 1e-6 and diff < 1e-4
    print("outputs unchanged")


if __name__ == "__main__":
    main()
