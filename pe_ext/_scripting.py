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
"""

from __future__ import annotations

import copy

_SCRIPTABLE: dict[type, type] = {}


def register_scriptable(layer: type, scriptable: type) -> None:
    _SCRIPTABLE[layer] = scriptable


class Scriptable:
    def __prepare_scriptable__(self):
        """What torch.jit.script compiles in this layer's place; a subclass the family did not register is compiled
        as it is."""
        scriptable = _SCRIPTABLE.get(type(self))
        if scriptable is None:
            return self
        twin = copy.copy(self)
        twin.__class__ = scriptable
        return twin
