"""What every op family's tests share: the dtypes, input builders for every memory layout, markers for what a
test needs (the compiled extension, its test-only ops, the ONNX packages), and running an ONNX export. GPU tests are marked `cuda` (conftest.py skips them, saying
why, where no CUDA device is present)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import pe_ext._backend

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

FORCED_FALLBACK = os.environ.get("PE_EXT_FORCE_FALLBACK", "0") == "1"

requires_extension = pytest.mark.skipif(
    FORCED_FALLBACK, reason="PE_EXT_FORCE_FALLBACK=1: the compiled extension is deliberately not loaded"
)
requires_testing_ops = pytest.mark.skipif(
    not pe_ext._backend.has_testing_ops(),
    reason="PE_EXT_FORCE_FALLBACK=1: no compiled extension" if FORCED_FALLBACK else
    "the extension was built without its test-only ops (the CUDA grid emulators); build with PE_EXT_TESTING=1",
)

# The ONNX graphs' results against eager: the same float32 math (float64 for float64 data) with other sin/cos and
# evaluation orders (a few ulps), then one rounding to the data's dtype (float16: one of its ulps where that flips).
ONNX_TOLERANCE = {torch.float64: {"atol": 1e-14, "rtol": 1e-14}, torch.float32: {"atol": 1e-6, "rtol": 1e-6},
                  torch.float16: {"atol": 1e-3, "rtol": 1e-3}}

requires_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pe_ext's test extras)")


def run_onnx(onnx_bytes: bytes, inputs) -> list[torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feed = {i.name: tensor.numpy() for i, tensor in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feed)]


def op_types(onnx_bytes: bytes) -> set[tuple[str, str]]:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return {(node.domain, node.op_type) for node in model.graph.node}


LAYOUTS = ["contiguous", "strided_d", "sliced_d", "misaligned", "permuted"]


def make_x(shape, dtype, layout, device="cpu"):
    """Random x of `shape` whose memory is laid out as `layout` says, built on `device` (so that a GPU sees the
    layout itself, which .cuda() of a CPU view would make contiguous and aligned)."""
    def randn(*size):
        return torch.randn(*size, device=device).to(dtype)

    if layout == "contiguous":
        return randn(shape)
    if layout == "strided_d":  # every other element of a wider row
        return randn(*shape[:-1], 2 * shape[-1])[..., ::2]
    if layout == "sliced_d":  # a prefix of wider rows: rows stay 16-byte aligned, the last chunk is a tail
        return randn(*shape[:-1], shape[-1] + 5)[..., : shape[-1]]
    if layout == "misaligned":  # storage offset of one element: no 16-byte accesses possible
        return randn(torch.Size(shape).numel() + 1)[1:].view(shape)
    if layout == "permuted":  # first two dimensions swapped in memory
        return randn(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    raise ValueError(layout)


class GraphRecorder:
    """A torch.compile backend that keeps every graph it is given (one per compile) and runs it eagerly."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward
