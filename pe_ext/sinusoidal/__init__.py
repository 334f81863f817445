"""The sinusoidal encoding family: x * scale + alpha * pe(position) in one pass, the table builder, and the layers."""

from .modules import PositionalEncoding, ScaledPositionalEncoding, SinusoidalPositionalEmbedding
from .ops import add_sinusoidal_pe, add_sinusoidal_pe_, make_positions, sinusoidal_embedding, sinusoidal_table

__all__ = [
    "PositionalEncoding",
    "ScaledPositionalEncoding",
    "SinusoidalPositionalEmbedding",
    "add_sinusoidal_pe",
    "add_sinusoidal_pe_",
    "make_positions",
    "sinusoidal_embedding",
    "sinusoidal_table",
]
