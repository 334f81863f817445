"""The sinusoidal ops' schema defaults, and the pure-PyTorch fallback taken when nothing is compiled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

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
