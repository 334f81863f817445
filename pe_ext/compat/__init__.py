"""Drop-in layers for the sinusoidal encodings of the code people run: one module per project, each with the
project's constructor, forward signature, state_dict and values (its float32 evaluation order included, to the
sin/cos rounding: see tests/compat), computed by pe_ext's kernels; and the patchers behind pe_ext.patch(model).

| project | pe_ext.compat | identical | differs |
|---|---|---|---|
| PyTorch nn.Transformer tutorial | tutorial.PositionalEncoding | constructor, forward(x) seq-first, state_dict {pe: (max_len, 1, d_model)} both ways, float32 values | dropout: Philox mask fused into the add (not nn.Dropout's generator); float16/bfloat16 x with a float32 module stays in x's dtype (the tutorial promotes to float32); odd d_model works (the tutorial fails) |
| ESPnet | espnet.PositionalEncoding, ScaledPositionalEncoding, LegacyRelPositionalEncoding, RelPositionalEncoding, StreamPositionalEncoding | constructors, forward signatures and outputs (tuples for the relative ones), growing table, reverse positions counted from the table length, pe never saved, legacy pe key dropped on load, state_dict {} or {alpha} | dropout fused (Philox); float16/bfloat16: x * sqrt(d) + pe rounded once (ESPnet rounds pe and x * sqrt(d) to x's dtype first); the table stays float32 and is a registered (non-persistent) buffer, kept ascending |
| fairseq | fairseq.SinusoidalPositionalEmbedding | constructor, forward(input, incremental_state, timestep, positions), make_positions, incremental row padding_idx + timestep + 1, padding_idx=None quirk (row 0 not zeroed), get_embedding, max_positions, empty state_dict, old weights/_float_tensor keys dropped, module dtype | no table (computed on the fly, no length limit); given positions are used (fairseq ignores them); d in {2, 3} works (fairseq divides by zero) |
| tensor2tensor | t2t.get_timing_signal_1d, add_timing_signal_1d | signatures, (1, length, channels) float32, inv_timescales = min_timescale * exp(...) in float32 as TF evaluates it, odd-channel zero pad | torch's float32 exp (TF's may differ in the last bit); add rounds once (t2t casts the signal to x's dtype first) |
| diffusers | diffusers.get_timestep_embedding, Timesteps | signatures, float32 frequencies and angle (scale applied after the product), fractional timesteps, flip_sin_to_cos, odd pad, float32 output, no state | - |
| x-transformers | xtransformers.ScaledSinusoidalEmbedding | constructor, forward(x, pos, seq_start_pos, offset), state_dict {scale}, float32 inv_freq as x-transformers computes it | inv_freq stays float32 under .half(); a (batch,) seq_start_pos works (x-transformers' einsum fails) |
| DETR | detr.PositionEmbeddingSine, NestedTensor | constructor, forward(NestedTensor) or forward(x, mask), masked cumulative positions, normalize/scale, float32 division angle, channels-first permuted output | mask=None means no padding (DETR asserts) |
| MAE | mae.get_2d_sincos_pos_embed | signature, float64 NumPy result, column-then-row halves, cls_token row | float64 sin/cos by the C library (NumPy's own may differ in the last float64 bit) |
| Hugging Face | hf.fairseq_style_table, marian_table, whisper_sinusoids (and the patched forwards) | the tables of M2M100/NLLB/NLLB-MoE/Speech2Text/XGLM/TrOCR/FSMT, Marian/Pegasus (float64 formula, odd widths) and Whisper; patched modules keep their state and outputs | rows computed on the fly instead of read from the table |
"""

from . import detr, diffusers, espnet, fairseq, hf, mae, patchers, t2t, tutorial, xtransformers

__all__ = ["detr", "diffusers", "espnet", "fairseq", "hf", "mae", "patchers", "t2t", "tutorial", "xtransformers"]
