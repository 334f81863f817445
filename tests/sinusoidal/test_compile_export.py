"""torch.compile (no graph breaks, eager parity, no recompile per sequence length), torch.export (parity, a dynamic
sequence dimension, save/load) and CUDA graph capture. The references are the eager results of the same modules,
which tests/test_module.py and tests/test_parity.py check against the float64 oracle."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import pe_ext
from tests.helpers import GraphRecorder
from tests.sinusoidal.oracle import oracle_add, oracle_encoding, tolerance

D_MODEL, MAX_LEN = 16, 64
# The module's table modes, as its keywords.
BUFFERS = {"persistent": {}, "non_persistent": {"persistent": False}, "none": {"buffer": "none"}}
LENGTHS = [5, 7, 12, 30, 64]  # no 0 or 1: torch.compile specializes those sizes by design


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Model(nn.Module):
    """Linear -> PositionalEncoding -> Linear, the smallest model that trains through the encoding."""

    def __init__(self, buffer="persistent", batch_first=True, dropout=0.0):
        super().__init__()
        self.inp = nn.Linear(8, D_MODEL)
        self.pos = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, dropout, **BUFFERS[buffer], batch_first=batch_first,
                                             scale=4.0)
        self.out = nn.Linear(D_MODEL, 3)

    def forward(self, x):
        return self.out(self.pos(self.inp(x)))


def make_x(seq_len, batch_first=True, features=D_MODEL, requires_grad=False):
    shape = (2, seq_len, features) if batch_first else (seq_len, 2, features)
    return torch.randn(shape, requires_grad=requires_grad)


def pe_ext_calls(graph_module):
    return [n for n in graph_module.graph.nodes if n.target is torch.ops.pe_ext.add_pe.default]


# torch.compile


@pytest.mark.parametrize("buffer", BUFFERS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_module_compiles_in_one_graph_without_recompiling_per_length(buffer, batch_first):
    module = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, **BUFFERS[buffer], batch_first=batch_first, scale=2.0)
    recorder = GraphRecorder()
    compiled = torch.compile(module, backend=recorder, fullgraph=True)  # fullgraph: a graph break is an error
    for seq_len in LENGTHS:
        x = make_x(seq_len, batch_first)
        torch.testing.assert_close(compiled(x), module(x), atol=0, rtol=0)
    # The first length compiles a static graph, the second a dynamic one that serves every later length.
    assert len(recorder.graphs) == 2
    assert all(len(pe_ext_calls(graph)) == 1 for graph in recorder.graphs)  # one opaque fused op each


@pytest.mark.parametrize("table", [False, True])
def test_functional_api_compiles_once_with_a_dynamic_length(table):
    def f(x, table):
        return pe_ext.add_sinusoidal_pe(x, table, offset=3, scale=0.5, batch_first=False)

    recorder = GraphRecorder()
    compiled = torch.compile(f, backend=recorder, fullgraph=True)
    rows = pe_ext.sinusoidal_table(MAX_LEN + 3, D_MODEL) if table else None
    for seq_len in LENGTHS:
        x = make_x(seq_len, batch_first=False)
        if seq_len == LENGTHS[0]:
            torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x, rows), f(x, rows), atol=0, rtol=0)
    assert len(recorder.graphs) == 1
    assert len(pe_ext_calls(recorder.graphs[0])) == 1


def test_changing_offset_does_not_recompile_each_time():
    """offset is a SymInt in the schemas: a decoding loop (a new offset per step) compiles twice, not per step."""
    module = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN)
    counter = CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    for offset in range(2, 7):
        x = make_x(1)
        torch.testing.assert_close(compiled(x, offset=offset), module(x, offset=offset), atol=0, rtol=0)
    assert counter.frame_count <= 2


@pytest.mark.parametrize("batch_first", [True, False])
def test_training_step_through_compile_matches_eager(batch_first):
    """Forward and backward of a compiled model (AOTAutograd traces the registered backward) against eager."""
    model = Model("non_persistent", batch_first)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for seq_len in LENGTHS[:3]:
        x = make_x(seq_len, batch_first, features=8, requires_grad=True)
        grads = torch.autograd.grad(compiled(x).square().sum(), (x, *model.parameters()))
        expected = torch.autograd.grad(model(x).square().sum(), (x, *model.parameters()))
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want)


def seeded(seed, f, *args):
    torch.manual_seed(seed)
    return f(*args)


def two_calls(seed, f, *args):
    """Two calls in a row after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return f(*args), f(*args)


def test_training_with_dropout_compiles_in_one_graph_and_draws_a_fresh_mask_per_call():
    """The seed is a tensor drawn in the graph (no .item(), no graph break): each call of the compiled graph draws
    its own, and the same torch.manual_seed gives eager's masks, values and gradients."""
    model = Model(dropout=0.5)
    recorder = GraphRecorder()
    compiled = torch.compile(model, backend=recorder, fullgraph=True)
    x = make_x(12, features=8, requires_grad=True)
    outs = two_calls(1, compiled, x)
    assert not torch.equal(outs[0], outs[1])
    for out, expected in zip(outs, two_calls(1, model, x)):
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        grads = torch.autograd.grad(out.square().sum(), (x, *model.parameters()))
        for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (x, *model.parameters()))):
            torch.testing.assert_close(got, want)
    assert len(recorder.graphs) == 1 and len(pe_ext_calls(recorder.graphs[0])) == 1


def test_inductor_forward_and_backward_match_eager():
    """The default backend once (CPU inductor compiles take seconds), in training with dropout (random ops run as in
    eager, fallback_random): a dynamic length from the first call, so one forward and one backward compile serve
    every length."""
    model = Model(dropout=0.3)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for seq_len in LENGTHS[:3]:
        x = make_x(seq_len, features=8, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 1)
        with torch._inductor.config.patch(fallback_random=True):
            out = seeded(seq_len, compiled, x)
        grads = torch.autograd.grad(out.square().sum(), (x, *model.parameters()))
        expected_out = seeded(seq_len, model, x)
        expected = torch.autograd.grad(expected_out.square().sum(), (x, *model.parameters()))
        torch.testing.assert_close(out, expected_out)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


# torch.export


@pytest.mark.parametrize("buffer", BUFFERS)
def test_export_matches_eager(buffer):
    model = Model(buffer).eval()
    x = make_x(10, features=8)
    program = torch.export.export(model, (x,))
    assert len(pe_ext_calls(program.graph_module)) == 1
    torch.testing.assert_close(program.module()(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("buffer", BUFFERS)
def test_export_with_a_dynamic_sequence_dim(buffer):
    """A table bounds the length (offset + seq_len <= max_len), so the Dim carries max=max_len; on the fly, no bound."""
    model = Model(buffer).eval()
    seq = torch.export.Dim("seq", max=MAX_LEN) if buffer != "none" else torch.export.Dim("seq")
    program = torch.export.export(model, (make_x(10, features=8),), dynamic_shapes={"x": {1: seq}})
    exported = program.module()
    for seq_len in LENGTHS + ([200] if buffer == "none" else []):
        x = make_x(seq_len, features=8)
        torch.testing.assert_close(exported(x), model(x), atol=0, rtol=0)
    if buffer != "none":
        with pytest.raises(Exception, match="Guard failed"):
            exported(make_x(MAX_LEN + 1, features=8))


def test_export_of_a_training_module_with_dropout_draws_a_fresh_mask_per_call():
    model = Model(dropout=0.5)
    x = make_x(10, features=8)
    exported = torch.export.export(model, (x,)).module()
    outs = two_calls(1, exported, x)
    assert not torch.equal(outs[0], outs[1])
    for out, expected in zip(outs, two_calls(1, model, x)):
        torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_exported_program_saves_and_loads():
    model = Model().eval()
    seq = torch.export.Dim("seq", max=MAX_LEN)
    program = torch.export.export(model, (make_x(10, features=8),), dynamic_shapes={"x": {1: seq}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    x = make_x(33, features=8)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


# CUDA graphs


@pytest.mark.cuda
@pytest.mark.parametrize("buffer", ["persistent", "none"])
def test_cuda_graph_capture_and_replay(buffer):
    """Forward (table or on the fly), in-place add and table build captured in one graph; each replay reads the new
    contents of the static input and matches eager and the oracle."""
    module = pe_ext.PositionalEncoding(64, max_len=256, **BUFFERS[buffer], scale=2.0).cuda()
    static_x = torch.randn(4, 100, 64, device="cuda")
    static_table = torch.empty(50, 64, device="cuda")

    def step():
        out = module(static_x, offset=7)
        inplace = static_x.clone()
        pe_ext.add_sinusoidal_pe_(inplace, offset=3)
        torch.ops.pe_ext.fill_table_(static_table, 11)
        return out, inplace

    graph, (static_out, static_inplace) = capture(step)

    for _ in range(3):
        x = torch.randn_like(static_x)
        static_x.copy_(x)
        static_table.zero_()
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, module(x, offset=7), atol=0, rtol=0)
        atol, rtol = tolerance(torch.float32, 107, 8.0)
        torch.testing.assert_close(static_out.double().cpu(), oracle_add(x.cpu(), 7, 2.0), atol=atol, rtol=rtol)
        torch.testing.assert_close(static_inplace, pe_ext.add_sinusoidal_pe(x, offset=3), atol=0, rtol=0)
        torch.testing.assert_close(static_table, pe_ext.sinusoidal_table(50, 64, offset=11, device="cuda"),
                                   atol=0, rtol=0)


def capture(step):
    """step() warmed up on a side stream (as the CUDA graphs documentation asks: it also fills the frequency cache),
    then captured; returns the graph and the outputs of the captured call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["table", "on_the_fly"])
def test_cuda_graph_capture_with_positions(mode):
    """positions and start_positions capture: the host reads no position while capturing (the kernel checks them
    against the table), so each replay uses the new contents of the static position tensors, as eager calls do."""
    d_model = 64
    table = pe_ext.sinusoidal_table(600, d_model, device="cuda") if mode == "table" else None
    static_x = torch.randn(4, 100, d_model, device="cuda")
    static_ids = torch.randint(0, 500, (4, 100), device="cuda")
    static_starts = torch.randint(0, 400, (4,), device="cuda")

    def step():
        return (pe_ext.add_sinusoidal_pe(static_x, table, positions=static_ids, padding_idx=1, alpha=0.5),
                pe_ext.add_sinusoidal_pe(static_x, table, start_positions=static_starts))

    graph, (by_ids, by_starts) = capture(step)
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        static_ids.copy_(torch.randint(0, 500, (4, 100), device="cuda"))
        static_starts.copy_(torch.randint(0, 400, (4,), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        expected_ids, expected_starts = step()  # eager, its positions checked on the host
        torch.testing.assert_close(by_ids, expected_ids, atol=0, rtol=0)
        torch.testing.assert_close(by_starts, expected_starts, atol=0, rtol=0)


@pytest.mark.cuda
def test_cuda_graph_capture_with_positions_and_dropout():
    """Dropout under capture draws its seed on the GPU inside the graph: each replay has a fresh mask, and the kept
    values are the eager result without dropout scaled by 1 / (1 - p), at the replay's positions."""
    static_x = torch.randn(4, 100, 64, device="cuda")
    static_ids = torch.randint(0, 500, (4, 100), device="cuda")
    graph, out = capture(lambda: pe_ext.add_sinusoidal_pe(static_x, positions=static_ids, dropout=0.5))
    masks = []
    for _ in range(3):
        static_ids.copy_(torch.randint(0, 500, (4, 100), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        masks.append(out == 0)
        kept = out != 0
        expected = pe_ext.add_sinusoidal_pe(static_x, positions=static_ids) / 0.5
        torch.testing.assert_close(out[kept], expected[kept])
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.cuda
def test_cuda_graph_capture_refuses_a_cpu_seed():
    """The op reads a CPU seed on the host, once: captured, every replay would reuse its mask, so it is refused (the
    layers and functions draw the seed on the GPU while capturing)."""
    x = torch.randn(2, 8, 16, device="cuda")
    torch.ops.pe_ext.add_pe(x, None, 0, 1.0, 1, dropout=0.5, seed=torch.tensor(3))  # warm-up: frequencies cached
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="seed must be on x's device"), torch.cuda.graph(graph):
        torch.ops.pe_ext.add_pe(x, None, 0, 1.0, 1, dropout=0.5, seed=torch.tensor(3))


def test_growing_layer_reads_no_positions_while_capturing(monkeypatch):
    """What a CUDA graph capture needs from a grow=True layer, decided on the CPU: while capturing, the layer does not
    read its positions to grow (a host read breaks the capture), so the op refuses positions past the table as it
    does under torch.compile (in a captured graph, the kernel's device-side assert); outside capture the layer grows
    and adds the oracle's rows."""
    from pe_ext.sinusoidal import modules

    layer = pe_ext.PositionalEncoding(8, max_len=10, grow=True, dropout=0.0)
    x = torch.randn(2, 4, 8)
    ids = torch.tensor([[0, 1, 2, 30], [3, 4, 5, 6]])
    monkeypatch.setattr(modules, "capturing_cuda_graph", lambda t: True)
    with pytest.raises(ValueError, match="positions up to 30 need 31 table rows"):
        layer(x, positions=ids)
    assert layer.pe.shape[1] == 10
    monkeypatch.undo()
    expected = x.double() + oracle_encoding(ids.reshape(-1), 8).reshape(2, 4, 8)
    torch.testing.assert_close(layer(x, positions=ids).double(), expected, atol=1e-5, rtol=1e-6)
    assert layer.pe.shape[1] >= 31


@pytest.mark.cuda
def test_cuda_graph_positions_outside_the_table_assert_in_a_subprocess():
    """A replayed position past the table stops the kernel with a device-side assert (torch's own indexing kernels do
    the same) instead of reading past the table. The assert leaves the CUDA context unusable, hence a subprocess."""
    script = textwrap.dedent("""
        import torch, pe_ext
        table = pe_ext.sinusoidal_table(16, 8, device="cuda")
        x = torch.randn(1, 4, 8, device="cuda")
        ids = torch.zeros(1, 4, dtype=torch.long, device="cuda")
        pe_ext.add_sinusoidal_pe(x, table, positions=ids)  # warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pe_ext.add_sinusoidal_pe(x, table, positions=ids)
        ids.fill_(16)
        graph.replay()
        torch.cuda.synchronize()
        print("no error")
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode != 0 and "no error" not in result.stdout, result.stdout + result.stderr
    assert "device-side assert" in result.stderr, result.stderr
