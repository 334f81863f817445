"""The sinusoidal ops' schema defaults, and the pure-PyTorch fallback taken when nothing is compiled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing

import pytest
import torch

import pe_ext
from pe_ext.sinusoidal import schema
from tests.helpers import FORCED_FALLBACK


def test_option_defaults_match_every_schema():
    """Wrappers leave out options equal to schema.DEFAULTS, so these must be the registered schemas' own defaults."""
    for name in schema.SCHEMAS:
        arguments = {a.name: a for a in getattr(torch.ops.pe_ext, name).default._schema.arguments}
        for key, value in schema.DEFAULTS.items():
            assert arguments[key].default_value == value, (name, key)


@pytest.mark.skipif(FORCED_FALLBACK, reason="already running in fallback mode")
def test_fallback_without_extension_warns_once_and_matches_oracle():
    script = textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import pe_ext
            import pe_ext.sinusoidal.ops, pe_ext.sinusoidal.modules
        assert sum("fallback" in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]
        import torch
        from tests.sinusoidal.oracle import oracle_add, tolerance
        assert pe_ext.backend()["cpu"] == "pure-PyTorch fallback", pe_ext.backend()
        assert not pe_ext.has_extension()
        x = torch.randn(2, 30, 16)
        atol, rtol = tolerance(torch.float32, 35, 4.0)
        torch.testing.assert_close(pe_ext.PositionalEncoding(16, 64)(x, offset=5).double(), oracle_add(x, 5),
                                   atol=atol, rtol=rtol)
        torch.testing.assert_close(pe_ext.add_sinusoidal_pe(x, offset=5).double(), oracle_add(x, 5), atol=atol,
                                   rtol=rtol)
        # add_pe is a composite of torch ops here: gradients for x, table and alpha come from them
        x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
        table = pe_ext.sinusoidal_table(9, 6, dtype=torch.float64).requires_grad_()
        alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        ids = torch.tensor([[1, 1, 0, 8], [2, 3, 4, 5]])
        assert torch.autograd.gradcheck(lambda x, t, a: pe_ext.add_sinusoidal_pe(
            x, t, scale=1.5, alpha=a, positions=ids, padding_idx=3), (x, table, alpha))
        print("fallback ok")
    """)
    env = {**os.environ, "PE_EXT_FORCE_FALLBACK": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback ok" in result.stdout


class _RecordingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.called = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.called.append(func)
        return func(*args, **(kwargs or {}))


class _Recorded(torch.Tensor):
    called: typing.ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.called.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_eager_calls_still_reach_torch_function_modes_and_subclasses():
    """Eager calls skip torch.ops (pe_ext/_backend.py, eager_op) only where nothing at the Python level needs to see
    them: a TorchFunctionMode, or a tensor subclass with __torch_function__, still sees torch.ops.pe_ext.add_pe."""
    layer, x = pe_ext.PositionalEncoding(8, 16), torch.randn(2, 4, 8)
    with _RecordingMode() as mode:
        layer(x)
        pe_ext.add_sinusoidal_pe(x)
    assert mode.called.count(torch.ops.pe_ext.add_pe.default) == 2, mode.called
    _Recorded.called = []
    out = layer(x.as_subclass(_Recorded))
    assert torch.ops.pe_ext.add_pe.default in _Recorded.called and isinstance(out, _Recorded)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), layer(x), rtol=0, atol=0)


@pytest.mark.skipif(FORCED_FALLBACK or not pe_ext.has_extension(), reason="the eager caller is the extension's")
def test_eager_caller_takes_arguments_as_torch_ops_does():
    """The extension's direct caller converts and checks arguments by the op's schema, as torch.ops does: the same
    result for positional and keyword arguments and defaults, and a TypeError naming a wrong argument."""
    call, op = pe_ext._backend.eager_op("add_pe"), torch.ops.pe_ext.add_pe.default
    x, table = torch.randn(2, 5, 6), pe_ext.sinusoidal_table(9, 6)
    assert torch.equal(call(x, table, 2, 0.5, 1), op(x, table, 2, 0.5, 1))
    assert torch.equal(call(x), op(x))
    assert torch.equal(call(x, None, 3, scale=2.0, layout="concatenated", base=500.0),
                       op(x, None, 3, scale=2.0, layout="concatenated", base=500.0))
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        call(x, bogus=1)
    with pytest.raises(TypeError, match="multiple values for argument 'scale'"):
        call(x, None, 0, 1.0, scale=2.0)
    with pytest.raises(TypeError, match="'base' by keyword only"):
        call(x, None, 0, 1.0, 1, 500.0)
    with pytest.raises(TypeError, match="missing argument 'x'"):
        call()
    with pytest.raises(RuntimeError, match="Expected a value of type 'float' for argument 'scale'"):
        call(x, None, 0, "a")
    # The op's own checks raise through it with their types, as through torch.ops.
    with pytest.raises(ValueError, match="table's last dimension"):
        call(x, torch.randn(9, 5))
    with pytest.raises(TypeError, match="x must be float32"):
        call(x.long())
