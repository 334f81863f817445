"""The rotary position embedding family: q and k rotated by their positions' angles in one pass, Hugging Face's
apply_rotary_pos_emb and rotary embedding module as drop-ins, and the patcher that swaps them into HF models."""

from . import onnx_export  # noqa: F401  (registers rotary's ONNX translations)
from .hf import apply_rotary_pos_emb, rope_init
from .modules import RotaryEmbedding
from .ops import apply_rotary

__all__ = ["RotaryEmbedding", "apply_rotary", "apply_rotary_pos_emb", "rope_init"]
