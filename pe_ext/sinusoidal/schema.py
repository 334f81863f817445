"""The sinusoidal family's op schemas, built from one table of its keyword options: the Python twin of
csrc/sinusoidal/ops.h's PE_SINUSOIDAL_OPTIONS (a test checks that the compiled schemas equal these)."""

from __future__ import annotations

from .. import _options

# (name, schema type, default), in schema order. What each means: csrc/sinusoidal/ops.h.
OPTIONS = (
    ("base", "float", 10000.0),
    ("layout", "str", "interleaved"),
    ("frequencies", "str", "paper"),
    ("min_timescale", "float", 1.0),
    ("max_timescale", "float", 10000.0),
    ("frequency_rounding", "str", "float32"),
    ("inv_freq", "Tensor?", None),
    ("precise_angle", "bool", False),
    ("positions", "Tensor?", None),
    ("padding_idx", "int", -1),
    ("alpha", "Tensor?", None),
    ("dropout", "float", 0.0),
    ("seed", "Tensor?", None),
)
DEFAULTS = {name: default for name, _, default in OPTIONS}
# The options that define the encoding's values (the rest say where and how strongly pe is added).
ENCODING = ("base", "layout", "frequencies", "min_timescale", "max_timescale", "frequency_rounding", "inv_freq",
            "precise_angle")
# The options a caller's frequencies (inv_freq) replace, which must then keep their defaults.
RECIPE = ("base", "frequencies", "min_timescale", "max_timescale", "frequency_rounding")


_TAIL = _options.schema_tail(OPTIONS)
SCHEMAS = {
    # out = x * scale + pe(offset + l) along dimension seq_dim of x; pe read from table when given, else computed.
    "add_pe": f"add_pe(Tensor x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *{_TAIL}) "
    "-> Tensor",
    # The same, written into x.
    "add_pe_": f"add_pe_(Tensor(a!) x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *{_TAIL}) "
    "-> ()",
    # The same, written into a preallocated out of x's shape and dtype that does not overlap x.
    "add_pe_out": f"add_pe_out(Tensor x, Tensor? table, SymInt offset, float scale, int seq_dim, Tensor(a!) out, "
    f"*{_TAIL}) -> ()",
    # out[p, :] = pe(offset + p, :): the table, built where out lives.
    "fill_table_": f"fill_table_(Tensor(a!) out, SymInt offset=0, *{_TAIL}) -> ()",
}


def with_defaults(**options) -> dict:
    """Every option, the given ones and the defaults of the rest; an unknown name is a TypeError."""
    return _options.with_defaults(DEFAULTS, options)
