"""Custom-op hygiene and deployment: torch.library.opcheck on a sample of calls, torch.compile (one graph with no
breaks, no recompilation per sequence length or offset, inductor forward and backward), torch.export (a dynamic
sequence dimension, save and load), and CUDA graph capture with positions given as tensors. The references are the
eager results, which test_parity.py checks against the float64 oracle."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import pe_ext
from tests.helpers import GraphRecorder, requires_extension

LENGTHS = [5, 7, 12, 30]  # no 0 or 1: torch.compile specializes those sizes by design


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def opcheck_samples(device="cpu"):
    """(name, args, kwargs) for both ops: layouts, GQA, partial gptj, tables, packed tokens, dtypes, requires_grad."""
    def randn(*shape, dtype=torch.float32, grad=False):
        return torch.randn(*shape, device=device).to(dtype).requires_grad_(grad)

    cu = torch.tensor([0, 2, 5], device=device)
    cases = [
        ("bhsd_gqa", (randn(2, 4, 5, 8), randn(2, 2, 5, 8)), {"offset": 3}),
        ("bshd_gptj_partial_bf16", (randn(2, 5, 4, 8, dtype=torch.bfloat16), None),
         {"layout": "bshd", "style": "gptj", "rotary_dim": 4, "positions": torch.arange(5, device=device) * 2}),
        ("thd_cu_seqlens_f64", (randn(5, 2, 8, dtype=torch.float64), randn(5, 1, 8, dtype=torch.float64)),
         {"layout": "thd", "cu_seqlens": cu, "precise_angle": True}),
        ("tables", (randn(2, 3, 5, 8), None), {"cos": randn(2, 6, 8), "sin": randn(2, 6, 8), "offset": 1}),
        ("inv_freq_scaled", (randn(1, 2, 5, 8), randn(1, 1, 5, 8)),
         {"inv_freq": torch.rand(4, device=device), "attention_scaling": 1.2, "transpose": True}),
    ]
    for name, (q, k), kwargs in cases:
        yield f"rotary-{name}", torch.ops.pe_ext.rotary.default, (q, k), kwargs
        if name in ("bhsd_gqa", "inv_freq_scaled"):  # autograd registration, sampled (opcheck is slow)
            grad_k = None if k is None else k.detach().requires_grad_()
            yield f"rotary-{name}-grad", torch.ops.pe_ext.rotary.default, (q.detach().requires_grad_(), grad_k), kwargs
        yield f"rotary_-{name}", torch.ops.pe_ext.rotary_.default, (q.clone(), None if k is None else k.clone()), kwargs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(device):
    failures = {}
    for name, op, args, kwargs in opcheck_samples(device):
        try:
            torch.library.opcheck(op, args, kwargs)
        except Exception as error:  # noqa: BLE001  (collect every failure)
            failures[name] = f"{type(error).__name__}: {str(error)[:400]}"
    assert not failures, failures


class Attention(nn.Module):
    """q, k projections -> pe_ext.RotaryEmbedding -> scores: the smallest model that trains through the rotation."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 32), nn.Linear(8, 16)
        self.rotary = pe_ext.RotaryEmbedding(8, 10000.0)

    def forward(self, x, offset: int = 0):
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, 4, 8).transpose(1, 2)
        k = self.k(x).view(batch, seq, 2, 8).transpose(1, 2)
        q, k = self.rotary(q, k, offset=offset)
        return q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)


def test_compiles_in_one_graph_without_recompiling_per_length_or_offset():
    model = Attention()
    recorder = GraphRecorder()
    compiled = torch.compile(model, backend=recorder, fullgraph=True)  # fullgraph: a graph break is an error
    for step, seq_len in enumerate(LENGTHS):
        x = torch.randn(2, seq_len, 8)
        torch.testing.assert_close(compiled(x, offset=step * 3), model(x, offset=step * 3), atol=0, rtol=0)
    # The first call compiles a static graph, the second a dynamic one that serves every later length and offset.
    assert len(recorder.graphs) == 2
    for graph in recorder.graphs:
        assert sum(node.target is torch.ops.pe_ext.rotary.default for node in graph.graph.nodes) == 1


def test_inductor_forward_and_backward_match_eager():
    model = Attention()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    x = torch.randn(2, 9, 8)
    eager_out, compiled_out = model(x, 4), compiled(x, 4)
    torch.testing.assert_close(compiled_out, eager_out)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(compiled_grads, eager_grads)


def test_in_place_form_compiles():
    def f(q, k, positions):
        q, k = q * 2, k * 2
        return pe_ext.apply_rotary(q, k, positions=positions, inplace=True)

    q, k, positions = torch.randn(1, 2, 6, 8), torch.randn(1, 1, 6, 8), torch.tensor([3, 1, 4, 1, 5, 9])
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, positions), f(q, k, positions), atol=0, rtol=0)


# torch 2.11 (the GPU image) cannot export this test model even with the rotation replaced by `q * 1, k * 1`: a guard
# of its contiguity check on the transposed views, Min(8*seq, 16*seq) == 8*seq, fails the dynamic dim.
@pytest.mark.skipif(torch.__version__ < "2.12", reason="torch < 2.12 cannot export this test model itself")
def test_export_with_a_dynamic_sequence_dim_saves_and_loads():
    model = Attention().eval()
    seq = torch.export.Dim("seq", min=2, max=512)
    program = torch.export.export(model, (torch.randn(2, 10, 8),), dynamic_shapes={"x": {1: seq}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for seq_len in (3, 17, 100):
        x = torch.randn(2, seq_len, 8)
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@requires_extension
@pytest.mark.cuda
def test_cuda_graph_replays_positions_given_as_tensors():
    """A captured decoding step: q and k for the next tokens, their positions in a tensor updated between replays."""
    q, k = torch.randn(4, 8, 1, 64, device="cuda"), torch.randn(4, 2, 1, 64, device="cuda")
    positions = torch.zeros(4, 1, dtype=torch.long, device="cuda")
    static = (q.clone(), k.clone())
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pe_ext.apply_rotary(*static, positions=positions)
    for step in range(3):
        new_q, new_k = torch.randn_like(q), torch.randn_like(k)
        static[0].copy_(new_q)
        static[1].copy_(new_k)
        positions.copy_(torch.tensor([[7], [100], [step], [4096 + step]], device="cuda"))
        graph.replay()
        expected = pe_ext.apply_rotary(new_q, new_k, positions=positions)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
