import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "sinusoidal"))

import pe_ext  # noqa: E402

FORCED_FALLBACK = os.environ.get("PE_EXT_FORCE_FALLBACK", "0") == "1"

requires_extension = pytest.mark.skipif(
    FORCED_FALLBACK, reason="PE_EXT_FORCE_FALLBACK=1: the compiled extension is deliberately not loaded"
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device present")


def pytest_report_header(config):
    return f"pe_ext backend: {pe_ext.backend()}; torch {torch.__version__} (CUDA build {torch.version.cuda})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
