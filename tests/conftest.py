import pytest
import torch

import pe_ext


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
