"""The examples run and show unchanged outputs (each asserts it)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import requires_extension

ROOT = Path(__file__).resolve().parents[2]


@requires_extension
@pytest.mark.parametrize("script", ["transformer_tutorial.py", "huggingface_marian.py"])
def test_example_runs(script):
    if script == "huggingface_marian.py":  # `make setup` installs it; a bare GPU image may not have it
        pytest.importorskip("transformers", reason="the Hugging Face example needs transformers")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outputs unchanged" in result.stdout
