"""What every family's schema.py shares: its OPTIONS table (name, schema type, default, in schema order) turned into a
schema tail and a filler of defaults; the Python twin of csrc/common/options.h's expansions."""

from __future__ import annotations


def _literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def schema_tail(options) -> str:
    """", type name=default, ..." for every option, as the C++ X-macro's PE_OPTION_SCHEMA expansion."""
    return "".join(f", {schema_type} {name}={_literal(default)}" for name, schema_type, default in options)


def with_defaults(defaults: dict, options: dict) -> dict:
    """Every option, the given ones and the defaults of the rest; an unknown name is a TypeError."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"pe_ext: unexpected keyword argument(s) {unknown}; the options are {list(defaults)}")
    return {**defaults, **options}
