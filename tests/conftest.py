import os

import pytest
import torch
from hypothesis import settings

import pe_ext

# CI explores the same property-test examples on every run (a red CI is then the change's, never the draw's);
# elsewhere each run draws new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("PE_EXT_CI"):
    settings.load_profile("ci")


def pytest_report_header(config):
    return f"pe_ext backend: {pe_ext.backend()}; torch {torch.__version__} (CUDA build {torch.version.cuda})"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, saying why, where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked cuda: needs a CUDA device, and none is present")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
