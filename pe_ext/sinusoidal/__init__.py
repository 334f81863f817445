"""The sinusoidal encoding family: x * scale + alpha * pe(position) in one pass, the table builder, and the layers."""

from . import onnx_export  # noqa: F401  (registers add_pe's ONNX translations)
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
