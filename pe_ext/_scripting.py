"""TorchScript for layers whose eager forward it cannot compile (keyword-only arguments, **keywords, the fast paths
that read nn.Module's dicts): torch.jit.script compiles, in such a layer's place, a copy of it (the same buffers,
parameters and attributes) whose class forward is written for TorchScript. A family registers each layer's
scriptable class (register_scriptable); the layer inherits Scriptable.

torch.jit.script also swaps these copies into the scripted model's eager parent (its children are replaced in place),
so a scriptable class's forward runs the layer's eager forward when not compiled:

    def forward(self, x: Tensor, ...) -> Tensor:
        if torch.jit.is_scripting():
            return self._graph_forward(x, ...)
        return self._eager_forward(x, ...)   # a @torch.jit.unused method calling the layer's own forward

The class also declares, as a dict of objects in __annotations__, the attributes TorchScript cannot type from their
values (a NamedTuple's field types, for one).

A pe_ext layer with no scriptable class is refused by name, before TorchScript meets its forward (whose error would
name a type annotation); a user's subclass of a pe_ext layer is compiled as it is.
"""

from __future__ import annotations

import copy

_SCRIPTABLE: dict[type, type] = {}


def register_scriptable(layer: type, scriptable: type) -> None:
    _SCRIPTABLE[layer] = scriptable


def scriptable_layers() -> list[str]:
    return sorted(f"{layer.__module__}.{layer.__qualname__}" for layer in _SCRIPTABLE)


class Scriptable:
    def __prepare_scriptable__(self):
        """What torch.jit.script compiles in this layer's place. A scriptable class may refuse some configurations
        of its layer: its why_not_scripted(layer) then returns the reason."""
        layer = type(self)
        scriptable = _SCRIPTABLE.get(layer)
        refusal = getattr(scriptable, "why_not_scripted", lambda _: None)(self)
        if scriptable is not None and refusal is None:
            twin = copy.copy(self)
            twin.__class__ = scriptable
            return twin
        if layer.__module__.split(".")[0] == "pe_ext":
            reason = f" ({refusal})" if refusal else ""
            raise NotImplementedError(
                f"pe_ext: torch.jit.script cannot compile {layer.__module__}.{layer.__qualname__}{reason}; the "
                f"layers it compiles are {', '.join(scriptable_layers())}. torch.jit.trace records this layer's "
                "eager forward instead")
        return self
