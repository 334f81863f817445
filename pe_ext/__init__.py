"""pe_ext: fast, exact positional encodings for PyTorch. One subpackage per op family; each registers its ops."""

from . import compat, rotary, sinusoidal
from ._backend import backend, has_extension
from .patch import patch
from .rotary import *
from .sinusoidal import *

__all__ = ["backend", "compat", "has_extension", "patch"]
__all__ += rotary.__all__
__all__ += sinusoidal.__all__
__version__ = "0.1.0"
