"""The rotary embedding layer. It holds the frequencies and the rope type's state only; the math lives in the ops."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._onnx import capturing_for_export
from .._scripting import Scriptable, register_scriptable
from . import hf, reference
from .ops import apply_rotary


class RotaryEmbedding(Scriptable, nn.Module):
    """Rotary position embedding applied on the fly: forward(q, k) rotates q and k (one fused call, no cos/sin cache),
    and cos_sin(x, position_ids) returns the (cos, sin) pair Hugging Face's rotary embedding returns.

    Args:
        head_dim: width of each head of q and k.
        base: the frequencies' base (HF's rope_theta): inv_freq(i) = 1 / base^(2i / rotary_dim), bitwise HF's.
        rotary_dim: the leading columns of each head that rotate (default head_dim); the rest pass through.
        style: "neox" (rotate_half pairs, HF Llama) or "gptj" (interleaved pairs).
        inv_freq: explicit frequencies (rotary_dim / 2 of them) instead of base.
        attention_scaling: factor on cos and sin.
        precise_angle: form and reduce each angle in double (error under 1e-6 at positions in the millions) instead
            of HF's float32 product position * inv_freq.
        device: where the frequencies live.

    RotaryEmbedding.from_config(config) reads a Hugging Face config's rope parameters (rope types default, linear,
    dynamic, yarn, longrope, llama3) and keeps HF's state for the types whose frequencies follow the sequence length
    (dynamic, longrope). The frequencies are a non-persistent float32 buffer, as HF's inv_freq, but they stay float32
    under module.to(dtype) (HF's buffer would be rounded to bfloat16, losing the phase at long context).
    """

    inv_freq: Tensor
    original_inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0, *, rotary_dim: int | None = None, style: str = "neox",
                 inv_freq: Tensor | None = None, attention_scaling: float = 1.0, precise_angle: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"pe_ext: head_dim must be a positive int, got {head_dim!r}")
        if inv_freq is None:
            rotary_dim = head_dim if rotary_dim is None else rotary_dim
            if not (isinstance(rotary_dim, int) and 0 < rotary_dim <= head_dim and rotary_dim % 2 == 0):
                raise ValueError(f"pe_ext: rotary_dim must be an even int in [2, head_dim = {head_dim}], got "
                                 f"{rotary_dim!r}")
            inv_freq = reference.default_inv_freq(base, rotary_dim)
        self.head_dim, self.base, self.style = head_dim, base, style
        self.rotary_dim = 2 * inv_freq.shape[0]
        self.attention_scaling, self.precise_angle = attention_scaling, precise_angle
        self.register_buffer("inv_freq", inv_freq.float().to(device), persistent=False)
        self.register_buffer("original_inv_freq", self.inv_freq.clone(), persistent=False)
        self.config, self.rope_type, self.layer_type = None, "default", None
        # One call checks every argument: the op refuses what it cannot honour before this module is used.
        apply_rotary(torch.zeros(1, 1, 1, head_dim, device=self.inv_freq.device), inv_freq=self.inv_freq,
                     style=style, attention_scaling=attention_scaling, precise_angle=precise_angle)

    @classmethod
    def from_config(cls, config, device: torch.device | str | None = None,
                    layer_type: str | None = None) -> RotaryEmbedding:
        """The rotary embedding of a Hugging Face model config (its rope_parameters, or rope_theta and rope_scaling
        before transformers 5), with HF's inv_freq and attention_scaling for its rope type."""
        inv_freq, attention_scaling = hf.rope_init(config, layer_type=layer_type)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        module = cls(head_dim, hf.rope_parameters(config, layer_type)["rope_theta"], inv_freq=inv_freq,
                     attention_scaling=attention_scaling, device=device)
        module.config, module.layer_type = config, layer_type
        module.rope_type = hf.rope_parameters(config, layer_type)["rope_type"]
        module.max_seq_len_cached = module.original_max_seq_len = config.max_position_embeddings
        return module

    def _apply(self, fn, recurse=True):
        """Devices follow .to() and .cuda(); the frequencies keep their float32 values under a dtype conversion."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, original in before.items():
            if original is not None and self._buffers[name].dtype != original.dtype:
                self._buffers[name] = original.to(self._buffers[name].device)
        return self

    @torch.no_grad()
    def _follow_length(self, seq_len: Tensor) -> None:
        """HF's dynamic_rope_update: dynamic recomputes its frequencies past the cached length and restores them for
        short sequences; longrope picks its long or short factors by the length."""
        params = hf.rope_parameters(self.config, self.layer_type)
        device = self.inv_freq.device
        if self.rope_type == "dynamic":
            if seq_len > self.max_seq_len_cached:
                inv_freq, self.attention_scaling = hf.rope_init(self.config, device, seq_len, self.layer_type)
                self.inv_freq = inv_freq.float()
                self.max_seq_len_cached = seq_len
            if seq_len < self.original_max_seq_len and self.max_seq_len_cached > self.original_max_seq_len:
                self.inv_freq = self.original_inv_freq
                self.max_seq_len_cached = self.original_max_seq_len
        elif self.rope_type == "longrope":
            original = params["original_max_position_embeddings"]
            if not hasattr(self, "long_inv_freq"):
                self.long_inv_freq, _ = hf.rope_init(self.config, device, original + 1, self.layer_type)
            long = self.long_inv_freq.to(device)
            self.inv_freq.copy_(torch.where(seq_len > original, long, self.original_inv_freq))

    def _follows_length(self) -> bool:
        return self.config is not None and self.rope_type in ("dynamic", "longrope")

    def cos_sin(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Hugging Face's rotary embedding output for position_ids ((batch, seq)): cos and sin of shape
        (batch, seq, rotary_dim) in x's dtype, times attention_scaling, with HF's own ops (so bitwise HF's)."""
        if self._follows_length():
            self._follow_length(torch.max(position_ids) + 1)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1) if self.style == "neox" else freqs.repeat_interleave(2, dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    # Not keyword-only: torch.onnx's TorchScript-based exporter passes a top-level model's defaults positionally.
    def forward(self, q: Tensor, k: Tensor | None = None, positions: Tensor | None = None, offset: int = 0,
                cu_seqlens: Tensor | None = None, layout: str | None = None, inplace: bool = False):
        """q (and k) rotated by the angles of their positions (see pe_ext.apply_rotary for layouts and positions);
        returns q, or (q, k) when k is given."""
        if self._follows_length():
            if capturing_for_export():
                raise NotImplementedError(
                    f"pe_ext: RotaryEmbedding with rope type {self.rope_type!r} cannot be exported (ONNX, "
                    "torch.export, jit.trace): it recomputes its frequencies from each call's length, which a graph "
                    "captured at one length would not; export a rope type whose frequencies are fixed (default, "
                    "linear, yarn, llama3)")
            self._follow_length(self._longest(q, positions, offset, cu_seqlens, layout))
        return apply_rotary(q, k, positions=positions, offset=offset, cu_seqlens=cu_seqlens, layout=layout,
                            inplace=inplace, inv_freq=self.inv_freq, style=self.style,
                            attention_scaling=self.attention_scaling, precise_angle=self.precise_angle)

    @staticmethod
    def _longest(q, positions, offset, cu_seqlens, layout) -> Tensor:
        """One past the largest position of the call, as a tensor (HF's torch.max(position_ids) + 1)."""
        if positions is not None:
            return positions.max() + 1 + offset
        if cu_seqlens is not None:
            return (cu_seqlens[1:] - cu_seqlens[:-1]).max() + offset
        seq_dim = {"bhsd": 2, "bshd": 1, "thd": 0}.get(layout or ("thd" if q.dim() == 3 else "bhsd"), 0)
        return torch.tensor(q.shape[seq_dim] + offset)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, style={self.style!r}, "
                f"rope_type={self.rope_type!r}, attention_scaling={self.attention_scaling}, "
                f"precise_angle={self.precise_angle}")


class _ScriptableRotaryEmbedding(RotaryEmbedding):
    """What torch.jit.script compiles in the layer's place (pe_ext/_scripting.py): forward as one call of the op
    when compiled (its keywords taken positionally too), the eager forward otherwise."""

    __annotations__ = {"inv_freq": Tensor, "original_inv_freq": Tensor}  # as objects: TorchScript's types

    @staticmethod
    def why_not_scripted(layer: RotaryEmbedding) -> str | None:
        if layer._follows_length():
            return f"rope type {layer.rope_type!r} recomputes its frequencies from each call's length"
        return None

    def forward(self, q: Tensor, k: Tensor | None = None, positions: Tensor | None = None, offset: int = 0,
                cu_seqlens: Tensor | None = None, layout: str | None = None,
                inplace: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return self._eager_forward(q, k, positions, offset, cu_seqlens, layout, inplace)
        if layout is None:
            layout = "thd" if q.dim() == 3 else "bhsd"
        if inplace:
            torch.ops.pe_ext.rotary_(q, k, positions=positions, offset=offset, inv_freq=self.inv_freq,
                                     style=self.style, attention_scaling=self.attention_scaling,
                                     precise_angle=self.precise_angle, cu_seqlens=cu_seqlens, layout=layout)
            if k is None:
                return q
            return q, k
        q_out, k_out = torch.ops.pe_ext.rotary(q, k, positions=positions, offset=offset, inv_freq=self.inv_freq,
                                               style=self.style, attention_scaling=self.attention_scaling,
                                               precise_angle=self.precise_angle, cu_seqlens=cu_seqlens, layout=layout)
        if k is None:
            return q_out
        return q_out, k_out

    @torch.jit.unused
    def _eager_forward(self, q: Tensor, k: Tensor | None, positions: Tensor | None, offset: int,
                       cu_seqlens: Tensor | None, layout: str | None, inplace: bool) -> Tensor | tuple[Tensor, Tensor]:
        return RotaryEmbedding.forward(self, q, k, positions=positions, offset=offset, cu_seqlens=cu_seqlens,
                                       layout=layout, inplace=inplace)


register_scriptable(RotaryEmbedding, _ScriptableRotaryEmbedding)
