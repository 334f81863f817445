"""PyTorch's nn.Transformer tutorial (beginner_source/transformer_tutorial.py): PositionalEncoding, sequence-first."""

from __future__ import annotations

from ..sinusoidal import modules


class PositionalEncoding(modules.PositionalEncoding):
    """The tutorial's PositionalEncoding(d_model, dropout=0.1, max_len=5000): forward(x) = dropout(x + pe[:seq_len])
    for x of shape (seq_len, batch, d_model), with the buffer `pe` of shape (max_len, 1, d_model) saved in state_dict,
    so that checkpoints load both ways. The tutorial's float32 div_term and angles (pe_ext's defaults); dropout fused
    into the add (a Philox mask, not nn.Dropout's generator). pe_ext.PositionalEncoding's extras (forward's offset,
    positions and start_positions) stay available."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__(d_model, max_len, dropout, batch_first=False)
