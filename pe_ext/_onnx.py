"""ONNX translations of pe_ext's ops, for both of torch.onnx's exporters, registered as each exporter is loaded.

An op family writes each op's translation once, as a builder: `builder(graph, **arguments)` receives the op's
arguments by schema name (tensors as graph values, None when absent; SymInts as int64 scalar values; the other
arguments as Python values), emits standard ONNX ops through `graph` (an OnnxGraph) and returns the output value.
register_translation("<op>", builder) adapts it to each exporter:
  - torch.onnx.export(..., dynamo=False), the TorchScript-based exporter: a symbolic function
    (torch.onnx.register_custom_op_symbolic), registered when torch.onnx is imported;
  - torch.onnx.export(..., dynamo=True): a traced onnxscript function in onnxscript's torch_lib registry, which
    torch.onnx reads at each export; registered when that registry is imported (onnxscript takes about a second to
    import, so pe_ext never imports it itself).
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Callable

import numpy as np
import torch

# The opset the translations emit (Unsqueeze/Squeeze/Slice with their axes as inputs: opset 13 and later).
MIN_OPSET = 13

# torch dtypes as ONNX's TensorProto numbers them (onnx_ir's DataType uses the same numbers).
ONNX_DTYPES = {torch.float32: 1, torch.int32: 6, torch.int64: 7, torch.bool: 9, torch.float16: 10,
               torch.float64: 11, torch.bfloat16: 16}
_TORCH_DTYPES = {number: dtype for dtype, number in ONNX_DTYPES.items()}

Builder = Callable[..., object]


def capturing_for_export() -> bool:
    """Whether torch.export or jit.trace is capturing a graph (torch.onnx's two exporters run one of them). ONNX
    graphs hold no writes, and neither exporter translates an op's write into a tensor: while capturing, a family's
    functions that write (the sinusoidal table builders, its in-place add) call its functional op instead."""
    # torch._C._is_tracing() is torch.jit.is_tracing() without its test for TorchScript (~0.1 us a call), which
    # never compiles these functions; torch.compile cannot trace it (a graph break), and never runs under jit.trace.
    return torch.compiler.is_exporting() or (not torch.compiler.is_compiling() and torch._C._is_tracing())


class OnnxGraph:
    """What a builder emits with, and what it may ask of its input values (both known when the graph is built)."""

    def op(self, op_type: str, *inputs, **attributes):
        """An ONNX node of the default domain; attributes are ints, floats, strings, int lists or numpy arrays."""
        raise NotImplementedError

    def constant(self, value, dtype: torch.dtype):
        """A constant tensor of `dtype` holding `value` (a number, a list or an array)."""
        raise NotImplementedError

    def dtype(self, value) -> torch.dtype:
        raise NotImplementedError

    def rank(self, value) -> int:
        raise NotImplementedError

    def width(self, value) -> int | None:
        """The size of the value's last dimension, None if it is dynamic."""
        raise NotImplementedError


def cast(g: OnnxGraph, value, have: torch.dtype, want: torch.dtype):
    """value (of dtype `have`) as `want`: a Cast only where they differ."""
    return value if have == want else g.op("Cast", value, to=ONNX_DTYPES[want])


def axes(g: OnnxGraph, *numbers: int):
    """An int64 list constant: the axes (or starts, ends, shape) input of Unsqueeze, Slice, Reshape..."""
    return g.constant(list(numbers), torch.int64)


# The precise angle's constants (csrc/common/angle.h): 2*pi rounded to double, its tail, 1 / (2*pi).
_TWO_PI, _TWO_PI_TAIL, _INV_TWO_PI = 6.283185307179586, 2.4492935982947064e-16, 0.15915494309189535


def reduced_angle(g: OnnxGraph, angle, acc: torch.dtype):
    """A float64 angle reduced modulo 2*pi as the kernels' precise_angle does it (without their fused multiply-adds),
    then cast to acc."""
    turns = g.op("Round", g.op("Mul", angle, g.constant(_INV_TWO_PI, torch.float64)))  # half to even, as rint
    reduced = g.op("Sub", g.op("Sub", angle, g.op("Mul", turns, g.constant(_TWO_PI, torch.float64))),
                   g.op("Mul", turns, g.constant(_TWO_PI_TAIL, torch.float64)))
    return cast(g, reduced, torch.float64, acc)


# The TorchScript exporter's attribute names carry their type as a suffix.
_ATTRIBUTE_SUFFIX = {int: "i", bool: "i", float: "f", str: "s", list: "i", tuple: "i", np.ndarray: "t"}


class _TorchScriptGraph(OnnxGraph):
    def __init__(self, g):
        self.g = g

    def op(self, op_type, *inputs, **attributes):
        named = {f"{name}_{_ATTRIBUTE_SUFFIX[type(value)]}": torch.from_numpy(value) if isinstance(value, np.ndarray)
                 else value for name, value in attributes.items()}
        return self.g.op(op_type, *inputs, **named)

    def constant(self, value, dtype):
        return self.g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    def dtype(self, value):
        return value.type().dtype()

    def rank(self, value):
        return value.type().dim()

    def width(self, value):
        return value.type().varyingSizes()[-1]


class _OnnxScriptGraph(OnnxGraph):
    def __init__(self):
        import onnx_ir
        from onnxscript import opset18

        self.ir, self.opset = onnx_ir, opset18

    def op(self, op_type, *inputs, **attributes):
        attributes = {name: self.ir.tensor(value) if isinstance(value, np.ndarray) else value
                      for name, value in attributes.items()}
        return getattr(self.opset, op_type)(*inputs, **attributes)

    def constant(self, value, dtype):
        return self.opset.Constant(value=self.ir.tensor(torch.tensor(value, dtype=dtype).numpy()))

    def dtype(self, value):
        return _TORCH_DTYPES[int(value.dtype)]

    def rank(self, value):
        return len(value.shape)

    def width(self, value):
        last = value.shape[-1]
        return last if isinstance(last, int) else None


def _is_symint(argument) -> bool:
    return isinstance(argument.real_type, torch.SymIntType)


def _is_tensor(argument) -> bool:
    kind = argument.type
    return isinstance(kind.getElementType() if isinstance(kind, torch.OptionalType) else kind, torch.TensorType)


def _bind(schema, args, kwargs) -> dict:
    """The op's arguments by schema name, defaults filled in."""
    bound = {}
    for index, argument in enumerate(schema.arguments):
        if index < len(args):
            bound[argument.name] = args[index]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value
    return bound


def _constant(value):
    """A TorchScript value's constant (numbers arrive as onnx::Constant tensors), or None."""
    node = value.node()
    if node.kind() != "onnx::Constant":
        return value.toIValue()
    return getattr(node, node.kindOf("value"))("value")  # its attribute's type names the accessor: t, s, ...


def _symbolic(op_name: str, builder: Builder) -> Callable:
    """The TorchScript exporter's symbolic function: every argument arrives as a value, in schema order."""
    schema = getattr(torch.ops.pe_ext, op_name).default._schema

    def symbolic(g, *values):
        graph, arguments = _TorchScriptGraph(g), {}
        for argument, value in zip(schema.arguments, values):
            constant = None if _is_tensor(argument) else _constant(value)
            if value.node().mustBeNone():
                arguments[argument.name] = None
            elif constant is None:  # a tensor, or a SymInt read from a shape (an int64 value already)
                arguments[argument.name] = value
            elif _is_symint(argument):
                arguments[argument.name] = graph.constant(int(constant), torch.int64)
            else:
                arguments[argument.name] = constant.item() if isinstance(constant, torch.Tensor) else constant
        return builder(graph, **arguments)

    return symbolic


def _onnxscript_function(op_name: str, builder: Builder) -> Callable:
    """The dynamo exporter calls its function with the graph node's arguments as given (defaults left out, SymInts
    as ints or values)."""
    schema = getattr(torch.ops.pe_ext, op_name).default._schema
    symints = [a.name for a in schema.arguments if _is_symint(a)]

    def pe_ext_translation(*args, **kwargs):
        graph = _OnnxScriptGraph()
        arguments = _bind(schema, args, kwargs)
        for name in symints:
            if isinstance(arguments[name], int):
                arguments[name] = graph.constant(arguments[name], torch.int64)
        return builder(graph, **arguments)

    pe_ext_translation.__name__ = f"pe_ext_{op_name}"
    return pe_ext_translation


class _QuietSignature(logging.Filter):
    """onnxscript parses a traced function's source for its domain at every export, and warns that ours takes
    *args, **kwargs (the op's arguments, whatever the op): a warning about pe_ext's code, not the user's."""

    def filter(self, record):
        return not record.getMessage().startswith("pe_ext_translation: Unsupported feature in function signature")


def _register_onnxscript_function(registration, op_name: str, builder: Builder) -> None:
    logging.getLogger("onnxscript").addFilter(_QUIET_SIGNATURE)
    registration.torch_op(f"pe_ext::{op_name}", trace_only=True)(_onnxscript_function(op_name, builder))


_QUIET_SIGNATURE = _QuietSignature()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls a function with a module once it has been imported (the module loaded as usual, then the call)."""

    def __init__(self):
        self.pending: dict[str, list[Callable]] = {}

    def find_spec(self, name, path=None, target=None):
        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _CallingLoader(spec.loader, self.pending.pop(name))
                    return spec
        return None


class _CallingLoader(importlib.abc.Loader):
    def __init__(self, loader, callbacks):
        self._loader, self._callbacks = loader, callbacks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for callback in self._callbacks:
            callback(module)

    def __getattr__(self, name):  # get_source, is_package, ...: the real loader's
        return getattr(self._loader, name)


_AFTER_IMPORT = _AfterImport()
sys.meta_path.insert(0, _AFTER_IMPORT)


def when_imported(module_name: str, callback: Callable) -> None:
    """callback(module) now if the module is loaded, else right after it is."""
    if module_name in sys.modules:
        callback(sys.modules[module_name])
    else:
        _AFTER_IMPORT.pending.setdefault(module_name, []).append(callback)


_ONNXSCRIPT_REGISTRY = "onnxscript.function_libs.torch_lib.registration"


def register_translation(op_name: str, builder: Builder) -> None:
    """Registers the translation of torch.ops.pe_ext.<op_name> with both exporters, each as it is loaded."""
    qualified = f"pe_ext::{op_name}"
    when_imported("torch.onnx", lambda torch_onnx: torch_onnx.register_custom_op_symbolic(
        qualified, _symbolic(op_name, builder), MIN_OPSET))
    when_imported(_ONNXSCRIPT_REGISTRY,
                  lambda registration: _register_onnxscript_function(registration, op_name, builder))
