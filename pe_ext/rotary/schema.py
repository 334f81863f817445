"""The rotary family's op schemas, built from one table of its keyword options: the Python twin of
csrc/rotary/ops.h's PE_ROTARY_OPTIONS (a test checks that the compiled schemas equal these)."""

from __future__ import annotations

from .. import _options

# (name, schema type, default), in schema order. What each means: csrc/rotary/ops.h.
OPTIONS = (
    ("positions", "Tensor?", None),
    ("offset", "SymInt", 0),
    ("base", "float", 10000.0),
    ("inv_freq", "Tensor?", None),
    ("rotary_dim", "int?", None),
    ("style", "str", "neox"),
    ("attention_scaling", "float", 1.0),
    ("precise_angle", "bool", False),
    ("cu_seqlens", "Tensor?", None),
    ("cos", "Tensor?", None),
    ("sin", "Tensor?", None),
    ("layout", "str", "bhsd"),
    ("transpose", "bool", False),
)
DEFAULTS = {name: default for name, _, default in OPTIONS}

_TAIL = _options.schema_tail(OPTIONS)
SCHEMAS = {
    # (q', k'): q and k with every head of each token rotated by its position's angles; k' is empty when k is None.
    "rotary": f"rotary(Tensor q, Tensor? k=None, *{_TAIL}) -> (Tensor, Tensor)",
    # The same, written into q and k.
    "rotary_": f"rotary_(Tensor(a!) q, Tensor(b!)? k=None, *{_TAIL}) -> ()",
}


def with_defaults(**options) -> dict:
    """Every option, the given ones and the defaults of the rest; an unknown name is a TypeError."""
    return _options.with_defaults(DEFAULTS, options)
