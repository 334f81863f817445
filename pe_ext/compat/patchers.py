"""pe_ext.patch's patchers for sinusoidal encodings (registered with pe_ext/patch.py's register_patcher).

patch(model) swaps, in place (the parent's attribute), every submodule it recognizes:
  - the projects' classes pe_ext.compat has drop-ins for, by class (module path and name): ESPnet's five
    positional encodings, fairseq's SinusoidalPositionalEmbedding, diffusers' Timesteps, x-transformers'
    ScaledSinusoidalEmbedding and DETR's PositionEmbeddingSine, replaced by pe_ext.compat's, built from the
    original's settings and sharing its parameters (ESPnet's alpha, x-transformers' scale);
  - Hugging Face's sinusoidal position modules (Marian, Pegasus, M2M100 and NLLB, NLLB-MoE, Speech2Text, XGLM,
    TrOCR, and Whisper encoder's embed_positions), replaced by a subclass of their own class that shares their state
    (parameters, buffers, attributes: state_dict unchanged, isinstance holds) and computes the rows with pe_ext's
    kernel instead of reading its table (pe_ext.compat.hf);
  - any other module whose state is one buffer `pe` shaped (1, max_len, d_model) or (max_len, 1, d_model) (the
    classic module, PyTorch's tutorial) and maybe an nn.Dropout, replaced by pe_ext.PositionalEncoding holding the
    same table.
Every swap is checked before it is made: the replacement and the original run on the same probe inputs in eval mode
(every row of a table a checkpoint may have changed) and must agree to float32 rounding; a recognized module that
does not is left alone, with a warning. Everything else is left alone.

A replaced Hugging Face module's class is made at run time, so a patched model pickles (torch.save(model)) only in a
process that patched the same class; save its state_dict, or undo the patch first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import sinusoidal
from ..patch import Swap, register_patcher
from . import detr, diffusers, espnet, fairseq, hf, xtransformers

# A builder makes the replacement of a recognized module and the probe inputs (positional arguments, each a tuple)
# on which the two must agree.
Builder = Callable[[nn.Module], tuple[nn.Module, list[tuple]]]
PROBE_LEN = 5


def _probe_x(d_model: int, dtype=torch.float32, device=None) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, PROBE_LEN, d_model, generator=generator).to(device=device, dtype=dtype)


# --- The projects' classes.

def _espnet(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    cls = getattr(espnet, type(module).__name__)
    table, p = module.pe, module.dropout.p
    if cls is espnet.RelPositionalEncoding:
        replacement = cls(module.d_model, p, (table.shape[1] + 1) // 2)
    elif cls is espnet.PositionalEncoding:
        replacement = cls(module.d_model, p, table.shape[1], reverse=module.reverse)
    else:
        replacement = cls(module.d_model, p, table.shape[1])
    if cls is espnet.ScaledPositionalEncoding:
        replacement.alpha = module.alpha
    replacement.to(table.device)
    x = _probe_x(module.d_model, table.dtype, table.device)
    probes = [(x,), (x, 3)] if cls is espnet.StreamPositionalEncoding else [(x,)]
    return replacement, probes


def _fairseq(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    table = module.weights
    padding_given = not bool(table[module.padding_idx].any())  # fairseq zeroes the row of a given padding_idx only
    replacement = fairseq.SinusoidalPositionalEmbedding(module.embedding_dim,
                                                        module.padding_idx if padding_given else None,
                                                        table.shape[0])
    replacement.to(device=table.device, dtype=table.dtype)
    tokens = torch.tensor([[5, 6, 7, module.padding_idx], [8, 9, 10, 11]], device=table.device)
    return replacement, [(tokens,), (tokens, {}, torch.tensor([3], device=table.device))]


def _timesteps(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    replacement = diffusers.Timesteps(module.num_channels, module.flip_sin_to_cos, module.downscale_freq_shift,
                                      module.scale)
    return replacement, [(torch.tensor([0.0, 1.5, 17.25, 999.0]),)]


def _xtransformers(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    inv_freq = module.inv_freq
    replacement = xtransformers.ScaledSinusoidalEmbedding(2 * inv_freq.numel())
    replacement.scale = module.scale
    replacement.inv_freq = inv_freq.detach().clone()  # the original's own frequencies, as it holds them
    x = torch.zeros(1, PROBE_LEN, 1, device=inv_freq.device)
    return replacement, [(x,), (x, None, None, 7)]


def _detr(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    replacement = detr.PositionEmbeddingSine(module.num_pos_feats, module.temperature, module.normalize,
                                             module.scale if module.normalize else None)
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[1, 3:, :] = mask[1, :, 4:] = True
    return replacement, [(detr.NestedTensor(torch.zeros(2, 3, 4, 6), mask),)]


PROJECT_CLASSES: dict[tuple[str, str], Builder] = {
    **{("espnet.nets.pytorch_backend.transformer.embedding", name): _espnet
       for name in ("PositionalEncoding", "ScaledPositionalEncoding", "LegacyRelPositionalEncoding",
                    "RelPositionalEncoding", "StreamPositionalEncoding")},
    ("fairseq.modules.sinusoidal_positional_embedding", "SinusoidalPositionalEmbedding"): _fairseq,
    ("diffusers.models.embeddings", "Timesteps"): _timesteps,
    ("x_transformers.x_transformers", "ScaledSinusoidalEmbedding"): _xtransformers,
    ("models.position_encoding", "PositionEmbeddingSine"): _detr,  # DETR's repository layout
}


# --- Hugging Face's classes: a subclass of the module's own class sharing its state, with pe_ext's forward.

_SUBCLASSES: dict[tuple[type, type], type] = {}


def _retyped(module: nn.Module, rows: type) -> nn.Module:
    """A module of a subclass of type(module) whose forward is rows.forward, sharing module's whole state."""
    key = (rows, type(module))
    if key not in _SUBCLASSES:
        name = f"PeExt{type(module).__name__}"
        _SUBCLASSES[key] = type(name, (rows, type(module)), {"__module__": __name__, "__qualname__": name})
        globals()[name] = _SUBCLASSES[key]  # so that pickle finds it, in this process
    replacement = object.__new__(_SUBCLASSES[key])
    replacement.__dict__ = module.__dict__
    return replacement


def _hf_ids(module: nn.Module) -> Tensor:
    """Token ids with padding (a left-padded row and a right-padded one) for a fairseq-style module's probe."""
    pad = module.padding_idx
    ids = torch.tensor([[pad, pad, 5, 6, 7], [5, 6, 7, 8, pad]])
    return ids.to(module.weights.device)


def _hf_m2m100(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    ids = _hf_ids(module)
    embeds = torch.zeros(2, PROBE_LEN, module.embedding_dim, device=ids.device)
    return _retyped(module, hf.M2M100Rows), [(ids,), (ids, None, 4), (None, embeds, 2)]


def _hf_tokens(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    ids = _hf_ids(module)
    return _retyped(module, hf.TokenPositionRows), [(ids,), (ids, 4)]


def _hf_xglm(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    positions = torch.arange(PROBE_LEN, device=module.weights.device).expand(2, -1)
    return _retyped(module, hf.XGLMRows), [(positions,), (positions + 9, 9)]


def _hf_marian(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    rows = module.weight.shape[0]
    every_row = torch.arange(rows, device=module.weight.device)  # computed, against the (maybe loaded) table
    return _retyped(module, hf.MarianRows), [((2, rows),), ((2, 1), rows - 1), ((1, rows), 0, every_row)]


def _hf_whisper_encoder(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    return _retyped(module, hf.WhisperEncoderRows), [(torch.arange(module.num_embeddings, device=module.weight.device),)]


HF_CLASSES: dict[str, tuple[str, Builder]] = {
    "M2M100SinusoidalPositionalEmbedding": ("m2m_100", _hf_m2m100),
    "NllbMoeSinusoidalPositionalEmbedding": ("nllb_moe", _hf_m2m100),
    "Speech2TextSinusoidalPositionalEmbedding": ("speech_to_text", _hf_tokens),
    "TrOCRSinusoidalPositionalEmbedding": ("trocr", _hf_tokens),
    "XGLMSinusoidalPositionalEmbedding": ("xglm", _hf_xglm),
    "MarianSinusoidalPositionalEmbedding": ("marian", _hf_marian),
    "PegasusSinusoidalPositionalEmbedding": ("pegasus", _hf_marian),
}


# --- Modules holding the classic table `pe`.

def _classic_table(module: nn.Module) -> Tensor | None:
    """The module's `pe` if that (and maybe an nn.Dropout) is all its state and it has the classic shapes."""
    pe = module._buffers.get("pe")
    if (pe is None or set(module._buffers) != {"pe"} or module._parameters or pe.dim() != 3 or 1 not in pe.shape[:2]
            or not all(isinstance(child, nn.Dropout) for child in module.children())):
        return None
    return pe


def _classic(module: nn.Module) -> tuple[nn.Module, list[tuple]]:
    pe = module.pe
    batch_first = pe.shape[0] == 1
    max_len, d_model = pe.shape[1 if batch_first else 0], pe.shape[2]
    dropouts = [child.p for child in module.children()]
    persistent = "pe" in module.state_dict()
    replacement = sinusoidal.PositionalEncoding(d_model, max_len, dropouts[0] if dropouts else 0.0,
                                                batch_first=batch_first, persistent=persistent, device=pe.device)
    replacement.to(pe.dtype)  # its table's values and dtype, as it holds them
    with torch.no_grad():
        replacement.pe.copy_(pe.reshape(1, max_len, d_model))
    x = _probe_x(d_model, pe.dtype, pe.device)[:, : min(PROBE_LEN, max_len)]
    return replacement, [(x if batch_first else x.transpose(0, 1),)]


def _builder(module: nn.Module, parent: nn.Module, attribute: str) -> Builder | None:
    cls = type(module)
    if (cls.__module__, cls.__name__) in PROJECT_CLASSES:
        return PROJECT_CLASSES[(cls.__module__, cls.__name__)]
    family = HF_CLASSES.get(cls.__name__)
    if family is not None and cls.__module__ == f"transformers.models.{family[0]}.modeling_{family[0]}":
        return family[1]
    if cls is nn.Embedding and attribute == "embed_positions" and type(parent).__name__ == "WhisperEncoder":
        return _hf_whisper_encoder
    if cls.__module__.startswith("pe_ext."):
        return None
    return _classic if _classic_table(module) is not None else None


# --- The check: the two agree on the probes, in eval mode.

def _agree(ours, theirs) -> bool:
    if isinstance(theirs, (tuple, list)):
        return isinstance(ours, (tuple, list)) and len(ours) == len(theirs) and all(map(_agree, ours, theirs))
    if not isinstance(theirs, Tensor) or ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return False
    eps = torch.finfo(theirs.dtype).eps
    magnitude = theirs.detach().double().abs().clamp(min=1.0)
    return bool(((ours.detach().double() - theirs.detach().double()).abs() <= 4 * eps * magnitude).all())


@torch.no_grad()
def _checked(replacement: nn.Module, original: nn.Module, probes: list[tuple]) -> bool:
    modes = original.training, replacement.training
    original.eval()
    replacement.eval()
    try:
        return all(_agree(replacement(*args), original(*args)) for args in probes)
    finally:
        original.train(modes[0])
        replacement.train(modes[1])


def _replacement(module: nn.Module, parent: nn.Module, attribute: str, name: str) -> nn.Module | None:
    builder = _builder(module, parent, attribute)
    if builder is None:
        return None
    replacement, probes = builder(module)
    if not _checked(replacement, module, probes):
        warnings.warn(f"pe_ext.patch: left {name} ({type(module).__qualname__}) alone: pe_ext's equivalent does "
                      "not reproduce its outputs (a table changed by training or a checkpoint, or another formula)",
                      stacklevel=3)
        return None
    return replacement.train(module.training)


@register_patcher
def sinusoidal_patcher(model: nn.Module) -> list[Swap]:
    """Swaps for every recognized sinusoidal position module of `model` (see the module docstring), named by its
    path in the model; a module reachable under several names is replaced under each by one replacement."""
    swaps, built = [], {}
    for prefix, parent in model.named_modules(remove_duplicate=False):
        for attribute, child in parent.named_children():
            if id(child) not in built:
                built[id(child)] = _replacement(child, parent, attribute, f"{prefix}.{attribute}".lstrip("."))
            if built[id(child)] is not None:
                swaps.append(Swap(f"{prefix}.{attribute}".lstrip("."), parent, attribute, built[id(child)]))
    return swaps
