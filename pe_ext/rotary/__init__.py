"""The rotary position embedding family: q and k rotated by their positions' angles in one pass, Hugging Face's
apply_rotary_pos_emb and rotary embedding module as drop-ins, and the patcher that swaps them into HF models."""

from .ops import apply_rotary

__all__ = ["apply_rotary"]
