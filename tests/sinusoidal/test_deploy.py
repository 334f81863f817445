"""Deploying: ONNX by both torch.onnx exporters, run by onnxruntime; TorchScript (script, save, load in a fresh
process); torch.fx; jit.trace in training mode; torch.export and AOTInductor (a package loaded in a fresh process,
a length past a grow=True table). The references are the eager results of the same modules, which the other test
files check against the float64 oracle."""

from __future__ import annotations

import inspect
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import pe_ext
from pe_ext.sinusoidal import schema, scripting
from tests.compat import test_deploy as compat_deploy
from tests.helpers import ONNX_TOLERANCE, op_types, requires_extension, requires_onnx, run_onnx
from tests.rotary import test_deploy as rotary_deploy

D_MODEL, MAX_LEN = 16, 64
# The dynamo exporter runs torch.export, through which the fallback's checks cannot read explicit positions.
dynamo_exporter = pytest.param(True, marks=[pytest.mark.slow, requires_extension])


class Zoo(nn.Module):
    """Every form of pe_ext in one model, an output each (one export covers them all): tables and computed rows,
    both batch conventions and 2-D x, offsets, positions (ids, fractional, start positions, padding), scale, alpha,
    given frequencies, every layout (odd widths too), precise angles, the functions."""

    NAMES = ("table", "seq_first", "rows_2d", "computed", "given_frequencies", "timescales", "alpha", "ids",
             "fractional", "starts", "embedding", "cos_first_odd", "interleaved_odd", "in_place", "table_function",
             "padding")

    def __init__(self):
        super().__init__()
        self.table = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, scale=2.0)
        self.seq_first = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, batch_first=False, persistent=False)
        self.computed = pe_ext.PositionalEncoding(D_MODEL, buffer="none", layout="concatenated", precise_angle=True)
        self.given = pe_ext.PositionalEncoding(D_MODEL, buffer="none",
                                               frequencies=torch.exp(torch.arange(0, D_MODEL, 2) * -0.7))
        self.timescales = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, frequencies="timescales",
                                                    frequency_rounding="correct")
        self.scaled = pe_ext.ScaledPositionalEncoding(D_MODEL, MAX_LEN, alpha=0.5)
        self.embedding = pe_ext.SinusoidalPositionalEmbedding(D_MODEL, padding_idx=1)

    def forward(self, x, ids, steps, starts, tokens):
        odd = x[..., :15]
        return (
            self.table(x, 3),
            self.seq_first(x.transpose(0, 1), 5),
            self.table(x[0]),
            self.computed(x, 1000),
            self.given(x),
            self.timescales(x),
            self.scaled(x),
            self.table(x, positions=ids),
            self.computed(x, -7, positions=steps),
            self.computed(x, start_positions=starts),
            self.embedding(tokens),
            pe_ext.add_sinusoidal_pe(odd, offset=-5, layout="concatenated_cos_first", alpha=0.25),
            pe_ext.add_sinusoidal_pe(odd, scale=0.5),
            pe_ext.add_sinusoidal_pe_(x.clone(), offset=2),
            pe_ext.sinusoidal_table(8, D_MODEL, offset=4, dtype=x.dtype),
            pe_ext.add_sinusoidal_pe(x, positions=ids, padding_idx=2, frequencies="timescales"),
        )


def zoo_inputs(batch, seq_len, dtype=torch.float32):
    tokens = torch.randint(2, 9, (batch, seq_len))
    tokens[0, :2] = 1  # padding
    return (torch.randn(batch, seq_len, D_MODEL).to(dtype), torch.randint(0, MAX_LEN, (batch, seq_len)),
            torch.rand(seq_len) * 50, torch.randint(0, 100, (batch,)), tokens)


ZOO_INPUT_NAMES = ["x", "ids", "steps", "starts", "tokens"]


def zoo(dtype):
    return Zoo().eval().to(dtype)  # tables and alpha in dtype; the given frequencies stay as given


def grow_model():
    """ESPnet's layer: its table (8 rows here) grows on demand."""
    return nn.Sequential(pe_ext.ScaledPositionalEncoding(D_MODEL, max_len=8, alpha=0.5)).eval()


def export_onnx(model, inputs, dynamo: bool) -> bytes:
    """The model in ONNX with a dynamic batch and sequence length."""
    if dynamo:
        batch, seq = torch.export.Dim("batch", min=2, max=16), torch.export.Dim("seq", min=2, max=48)
        shapes = {"x": {0: batch, 1: seq}, "ids": {0: batch, 1: seq}, "steps": {0: seq}, "starts": {0: batch},
                  "tokens": {0: batch, 1: seq}}
        return torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=shapes,
                                 verbose=False).model_proto.SerializeToString()
    axes = {"x": {0: "batch", 1: "seq"}, "ids": {0: "batch", 1: "seq"}, "steps": {0: "seq"}, "starts": {0: "batch"},
            "tokens": {0: "batch", 1: "seq"}}
    buffer = io.BytesIO()
    torch.onnx.export(model, inputs, buffer, dynamo=False, input_names=ZOO_INPUT_NAMES, dynamic_axes=axes)
    return buffer.getvalue()


# ONNX


@requires_onnx
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("dynamo", [False, dynamo_exporter])
def test_onnx_export_runs_in_onnxruntime_like_eager(dynamo, dtype):
    """Every form in one graph of standard ONNX ops, run by onnxruntime at lengths and batch sizes other than the
    example's: equal to eager within a few ulps of the math's dtype."""
    model = zoo(dtype)
    onnx_bytes = export_onnx(model, zoo_inputs(2, 10, dtype), dynamo)
    ops = op_types(onnx_bytes)
    assert {domain for domain, _ in ops} == {""}, ops  # the default ONNX domain only: no pe_ext op left
    assert {("", "Sin"), ("", "Cos"), ("", "Gather")} <= ops
    assert ("", "Exp") not in ops  # the frequencies are constants, exactly the kernels'
    for batch, seq_len in [(3, 7), (2, 33)]:
        inputs = zoo_inputs(batch, seq_len, dtype)
        with torch.no_grad():
            expected = model(*inputs)
        outputs = run_onnx(onnx_bytes, inputs)
        assert len(outputs) == len(Zoo.NAMES)
        for name, got, want in zip(Zoo.NAMES, outputs, expected):
            assert got.dtype == want.dtype, name
            torch.testing.assert_close(got, want, **ONNX_TOLERANCE[dtype], msg=lambda m, name=name: f"{name}: {m}")


# What each mode exports: (layer, ONNX ops its graph holds, ops it does not). On the fly, the frequencies are
# constants (no Exp); Gather also reads shapes there.
MODES = {
    "table": (lambda: pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, scale=2.0), {"Gather"}, {"Sin", "Cos"}),
    "on_the_fly": (lambda: pe_ext.PositionalEncoding(D_MODEL, buffer="none"), {"Sin", "Cos"}, {"Exp"}),
}


@requires_onnx
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dynamo", [False, dynamo_exporter])
def test_onnx_exports_a_table_as_a_gather_of_its_rows_and_on_the_fly_rows_as_sin_and_cos(dynamo, mode):
    make, present, absent = MODES[mode]
    layer = make().eval()
    if dynamo:
        seq = torch.export.Dim("seq", min=2, max=MAX_LEN)
        onnx_bytes = torch.onnx.export(layer, (torch.randn(2, 10, D_MODEL),), dynamo=True, verbose=False,
                                       dynamic_shapes={"x": {1: seq}}).model_proto.SerializeToString()
    else:
        buffer = io.BytesIO()
        torch.onnx.export(layer, (torch.randn(2, 10, D_MODEL),), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {1: "seq"}})
        onnx_bytes = buffer.getvalue()
    ops = {op for _, op in op_types(onnx_bytes)}
    assert present <= ops and not absent & ops, ops
    x = torch.randn(2, 37, D_MODEL)
    torch.testing.assert_close(run_onnx(onnx_bytes, (x,))[0], layer(x), atol=1e-6, rtol=1e-6)


def training_model():
    return nn.Sequential(nn.Linear(8, D_MODEL), pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, 0.5)).train()


@requires_onnx
@pytest.mark.slow
def test_dynamo_onnx_export_of_training_dropout_is_refused_clearly():
    with pytest.raises(Exception) as refused:  # the exporter wraps the translation's error in its own
        torch.onnx.export(training_model(), (torch.randn(2, 10, 8),), dynamo=True, verbose=False)
    chain = [refused.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any("dropout (p=0.5) cannot be exported to ONNX" in str(e) and "model.eval()" in str(e) for e in chain)


@requires_onnx
def test_torchscript_onnx_export_exports_training_models_in_eval_mode_or_refuses_dropout():
    """The TorchScript-based exporter exports in eval mode by default (no dropout, as model.eval()); asked to export
    training, it is refused with the same message."""
    model, x = training_model(), torch.randn(2, 10, 8)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False)
    torch.testing.assert_close(run_onnx(buffer.getvalue(), (x,))[0], model.eval()(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"dropout \(p=0\.5\) cannot be exported to ONNX.*model\.eval\(\)"):
        torch.onnx.export(model.train(), (x,), io.BytesIO(), dynamo=False, training=torch.onnx.TrainingMode.TRAINING)


@requires_onnx
def test_torchscript_onnx_export_of_a_growing_layer_past_its_table():
    """jit.trace records sizes as constants: the graph extends its table as eager would grow it (to twice its rows
    here), and serves every length up to that; the layer's own table is left as it was."""
    model = grow_model()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(2, 12, D_MODEL),), buffer, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}})
    assert model[0].pe.shape[1] == 8
    for seq_len in (5, 12, 16):
        x = torch.randn(3, seq_len, D_MODEL)
        torch.testing.assert_close(run_onnx(buffer.getvalue(), (x,))[0], model(x), atol=1e-6, rtol=1e-6)


# TorchScript

# Each layer as models use it, with the inputs of its call forms: (layer, [call arguments after x]).
LAYERS = {
    "table": lambda: pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, scale=2.0),
    "seq_first_computed": lambda: pe_ext.PositionalEncoding(D_MODEL, buffer="none", batch_first=False,
                                                            layout="concatenated_cos_first", precise_angle=True),
    "given_frequencies": lambda: pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, persistent=False,
                                                           frequencies=torch.exp(torch.arange(0, D_MODEL, 2) * -0.3)),
    "scaled": lambda: pe_ext.ScaledPositionalEncoding(D_MODEL, MAX_LEN, alpha=0.5, frequencies="timescales"),
    "embedding": lambda: pe_ext.SinusoidalPositionalEmbedding(D_MODEL, padding_idx=1, layout="interleaved"),
}


def layer_calls(name, dtype=torch.float32):
    """The layer's call forms, as (args, kwargs), x in dtype."""
    if name == "embedding":
        tokens = torch.randint(2, 9, (2, 7))
        tokens[1, :3] = 1
        return [((tokens,), {}), ((tokens,), {"positions": torch.arange(14).reshape(2, 7) + 3})]
    x = (torch.randn(7, 2, D_MODEL) if name == "seq_first_computed" else torch.randn(2, 7, D_MODEL)).to(dtype)
    return [((x,), {}), ((x, 5), {}), ((x[0],), {}), ((x,), {"positions": torch.randint(0, 40, x.shape[:-1])}),
            ((x,), {"start_positions": torch.tensor([4, 9])})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", LAYERS)
def test_torchscript_scripts_every_layer_equal_to_eager(name, dtype):
    layer = LAYERS[name]().eval().to(dtype)
    scripted = torch.jit.script(layer)
    assert ("pe_ext::fill_table_" if name == "embedding" else "pe_ext::add_pe") in str(scripted.inlined_graph)
    for args, kwargs in layer_calls(name, dtype):
        torch.testing.assert_close(scripted(*args, **kwargs), layer(*args, **kwargs), atol=0, rtol=0)


def test_torchscript_scripts_a_model_holding_layers_and_its_eager_copy_keeps_working():
    """torch.jit.script puts its layer copies into the eager parent; they run the eager forward there (growth
    included)."""
    model = nn.Sequential(nn.Linear(8, D_MODEL), pe_ext.PositionalEncoding(D_MODEL, 8, grow=True)).eval()
    x = torch.randn(2, 7, 8)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected, atol=0, rtol=0)
    longer = torch.randn(2, 12, 8)
    torch.testing.assert_close(model(longer)[:, :7], model(longer[:, :7]), atol=0, rtol=0)  # grown past 8 rows
    with pytest.raises(Exception, match="need 12 table rows, but the table has 8"):
        scripted(longer)  # a scripted table does not grow


def test_torchscript_training_draws_a_fresh_mask_per_call_as_eager():
    layer = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, 0.5)
    assert_fresh_masks_as_eager(torch.jit.script(layer), layer)


def test_torchscript_calls_spell_out_every_encoding_option():
    """The TorchScript calls name each option (TorchScript has no **keywords): the encoding tuple's fields and
    inv_freq are schema.ENCODING, and each call passes them all."""
    assert set(scripting.Encoding._fields) | {"inv_freq"} == set(schema.ENCODING)
    for call in (scripting.add_pe, scripting.embedding):
        passed = set(re.findall(r"(\w+)=", inspect.getsource(call)))
        assert set(schema.ENCODING) <= passed, call


def two_calls(seed, f, *args):
    """Two calls in a row after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return f(*args), f(*args)


def assert_fresh_masks_as_eager(graph_layer, layer):
    """Two training calls of the captured layer draw two masks, each the eager layer's under the same seed."""
    x = torch.randn(2, 7, D_MODEL)
    outs = two_calls(1, graph_layer, x)
    assert not torch.equal(outs[0], outs[1])
    for got, want in zip(outs, two_calls(1, layer, x)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


# torch.fx


class Holder(nn.Module):
    """A model holding a layer, as torch.fx.symbolic_trace meets it: it calls the layer with x, fixed other
    arguments, and `value` as the keyword argument `keyword` if one is named."""

    def __init__(self, layer, args=(), keyword=None):
        super().__init__()
        self.layer, self.out, self.args, self.keyword = layer, nn.Identity(), args, keyword

    def forward(self, x, value=None):
        kwargs = {} if self.keyword is None else {self.keyword: value}
        return self.out(self.layer(x, *self.args, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", LAYERS)
def test_fx_traces_every_layer_to_its_op_equal_to_eager(name, dtype):
    layer = LAYERS[name]().eval().to(dtype)
    op = torch.ops.pe_ext.fill_table_ if name == "embedding" else torch.ops.pe_ext.add_pe
    for (x, *args), kwargs in layer_calls(name, dtype):
        (keyword, value), = kwargs.items() or [(None, None)]
        traced = torch.fx.symbolic_trace(Holder(layer, args, keyword))
        targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
        assert op in targets, targets
        torch.testing.assert_close(traced(x, value), layer(x, *args, **kwargs), atol=0, rtol=0)


def test_fx_traced_training_draws_a_fresh_mask_per_call_as_eager():
    layer = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, 0.5)
    assert_fresh_masks_as_eager(torch.fx.symbolic_trace(Holder(layer)), layer)


# jit.trace


def test_jit_trace_in_training_mode_draws_a_fresh_mask_per_call_as_eager():
    """The seed is drawn by torch.randint, which the trace records: each call of the traced module draws its own."""
    layer = pe_ext.PositionalEncoding(D_MODEL, MAX_LEN, 0.5)
    # check_trace=False: the check would compare two different masks
    assert_fresh_masks_as_eager(torch.jit.trace(layer, (torch.randn(2, 7, D_MODEL),), check_trace=False), layer)


# torch.export and AOTInductor


def export_past_the_table(model):
    """Exported with an example longer than the table: the graph extends its own copy of the table by the rows a
    call needs (the 9th-row guard torch.export derives from the growth test bounds the length from below)."""
    seq = torch.export.Dim("seq", min=10, max=4 * MAX_LEN)
    return torch.export.export(model, (torch.randn(2, 12, D_MODEL),), dynamic_shapes={"input": {1: seq}})


def test_export_of_a_growing_layer_past_its_table_serves_every_longer_length():
    model = grow_model()
    exported = export_past_the_table(model).module()
    assert model[0].pe.shape[1] == 8  # exporting grew no buffer
    for seq_len in (12, 20, 3 * MAX_LEN):
        x = torch.randn(2, seq_len, D_MODEL)
        torch.testing.assert_close(exported(x), model(x), atol=0, rtol=0)


FRESH_PROCESS = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    import torch.onnx  # loaded before pe_ext (as transformers does): pe_ext registers its symbolics at import
    import pe_ext

    # pe_ext registers its ONNX translations as the exporters load: importing it does not load onnxscript (~1 s).
    assert "onnxscript" not in sys.modules
    root = Path(sys.argv[1])
    for name, calls in torch.load(root / "scripted.pt").items():
        scripted = torch.jit.load(root / f"{name}.pt")
        for args, kwargs, expected in calls:
            torch.testing.assert_close(scripted(*args, **kwargs), expected, atol=0, rtol=0)
    package = torch._inductor.aoti_load_package(str(root / "grow.pt2"))
    for x, expected in torch.load(root / "aoti.pt"):
        torch.testing.assert_close(package(x), expected, atol=1e-6, rtol=1e-6)
    print("loaded and checked", flush=True)
""")


def scripted_layers():
    """(layer, [(args, kwargs, eager result)]) for each layer TorchScript compiles: pe_ext's (LAYERS), the compat
    layers' and the rotary ones' (their own tests' tables)."""
    for name, make in LAYERS.items():
        layer = make().eval()
        yield layer, [(args, kwargs, layer(*args, **kwargs)) for args, kwargs in layer_calls(name)]
    for make, calls in compat_deploy.SCRIPTED.values():
        layer = make().eval()
        yield layer, [(args, kwargs, layer(*args, **kwargs)) for args, kwargs in calls()]
    for make in rotary_deploy.LAYERS.values():
        layer = make()
        eager = [layer(*args, **kwargs) for args, kwargs in rotary_deploy.layer_calls()]  # in-place calls write x
        yield layer, [(args, kwargs, want) for (args, kwargs), want in zip(rotary_deploy.layer_calls(), eager)]


@pytest.mark.slow
def test_scripted_layers_and_an_aoti_package_load_in_a_fresh_process(tmp_path):
    """One fresh process (imports are slow) with `import pe_ext` alone loads every scripted layer (pe_ext's, the
    compat and rotary ones TorchScript compiles) and an AOTInductor package of a growing layer exported past its
    table, each equal to eager."""
    scripted = {}
    for index, (layer, calls) in enumerate(scripted_layers()):
        torch.jit.save(torch.jit.script(layer), tmp_path / f"{index}.pt")
        scripted[index] = calls
    torch.save(scripted, tmp_path / "scripted.pt")
    model = grow_model()
    fast_build = {"aot_inductor.compile_wrapper_opt_level": "O0", "aot_inductor.precompile_headers": False}
    torch._inductor.aoti_compile_and_package(export_past_the_table(model), package_path=str(tmp_path / "grow.pt2"),
                                             inductor_configs=fast_build)
    lengths = (12, 40, 3 * MAX_LEN)
    torch.save([(x, model(x)) for x in (torch.randn(3, n, D_MODEL) for n in lengths)], tmp_path / "aoti.pt")
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "loaded and checked" in result.stdout, result.stderr[-3000:]
