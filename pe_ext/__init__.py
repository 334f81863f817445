"""pe_ext: fast, exact sinusoidal positional encoding for PyTorch."""

from ._backend import backend, has_extension
from .sinusoidal.modules import PositionalEncoding, ScaledPositionalEncoding, SinusoidalPositionalEmbedding
from .sinusoidal.ops import add_sinusoidal_pe, add_sinusoidal_pe_, make_positions, sinusoidal_embedding, sinusoidal_table

__all__ = [
    "PositionalEncoding",
    "ScaledPositionalEncoding",
    "SinusoidalPositionalEmbedding",
    "add_sinusoidal_pe",
    "add_sinusoidal_pe_",
    "backend",
    "has_extension",
    "make_positions",
    "sinusoidal_embedding",
    "sinusoidal_table",
]
__version__ = "0.1.0"
