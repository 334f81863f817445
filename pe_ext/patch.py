"""pe_ext.patch(model): swaps what pe_ext has a drop-in for into a model, and undoes it. Each op family registers
patchers (register_patcher): functions that look at a model and return the swaps they would make. The rotary family
swaps transformers' apply_rotary_pos_emb (pe_ext/rotary/hf.py); other families add theirs the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Swap:
    """One attribute of `owner` (a Python module whose function every model of a family calls, or a model's
    submodule) replaced by `replacement`."""

    name: str  # what is swapped, as users know it, e.g. transformers.models.llama.modeling_llama.apply_rotary_pos_emb
    owner: object
    attribute: str
    replacement: object


Patcher = Callable[[nn.Module], list[Swap]]
PATCHERS: list[Patcher] = []


def register_patcher(patcher: Patcher) -> Patcher:
    """Adds a patcher (usable as a decorator); patch() asks every registered patcher, in registration order."""
    PATCHERS.append(patcher)
    return patcher


# Swaps in effect, by (owner, attribute): the original value and how many patches hold the swap. A module-level
# function serves every model of its family, so two patched models share one swap, undone when both are.
_ACTIVE: dict[tuple[int, str], list] = {}


def _apply(swap: Swap) -> None:
    key = (id(swap.owner), swap.attribute)
    if key in _ACTIVE:
        _ACTIVE[key][1] += 1
        return
    _ACTIVE[key] = [getattr(swap.owner, swap.attribute), 1]
    setattr(swap.owner, swap.attribute, swap.replacement)


def _revert(swap: Swap) -> None:
    key = (id(swap.owner), swap.attribute)
    entry = _ACTIVE[key]
    entry[1] -= 1
    if entry[1] == 0:
        setattr(swap.owner, swap.attribute, entry[0])
        del _ACTIVE[key]


class Patch:
    """What patch() swapped (names) and the way back (undo(), or leaving a `with` block)."""

    def __init__(self, swaps: list[Swap], applied: bool) -> None:
        self.swaps = swaps
        self.applied = applied

    @property
    def names(self) -> list[str]:
        return [swap.name for swap in self.swaps]

    def undo(self) -> None:
        """Restores what this patch swapped (a shared swap stays while another patch holds it). Idempotent."""
        if self.applied:
            for swap in reversed(self.swaps):
                _revert(swap)
            self.applied = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"Patch({state}: {', '.join(self.names) or 'nothing'})"


def patch(model: nn.Module, dry_run: bool = False) -> Patch:
    """Swaps pe_ext's fused drop-ins into `model` where a registered patcher finds a known layer or function, and
    returns a Patch naming them (patch.names) with patch.undo(). dry_run=True only reports what would be swapped."""
    swaps, seen = [], set()
    for patcher in PATCHERS:
        for swap in patcher(model):
            key = (id(swap.owner), swap.attribute)
            if key not in seen:
                seen.add(key)
                swaps.append(swap)
    if not dry_run:
        for swap in swaps:
            _apply(swap)
    return Patch(swaps, applied=not dry_run)
