// torch.ops matches every schema argument against the call's keywords by name, making a Python string of each
// argument name on each call: for add_pe's 21 arguments about 2 us, more than a decoding step's add. The caller made
// here matches the keywords given against the schema instead, converts arguments as torch.ops does
// (torch::jit::argumentToIValue, the same errors), releases the GIL around the op as torch.ops does, and calls the op
// through the dispatcher, so that autograd, vmap, fake tensors, tracing and CUDA graphs see it as they see any call.
// What it leaves out happens in Python: __torch_function__ overrides and modes, and torch.compile's tracing; callers
// use it only where neither applies (pe_ext/_backend.py, eager_op).
#include "common/eager_call.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <optional>
#include <string>
#include <vector>

namespace pe_ext {
namespace {

namespace py = pybind11;

py::object call_boxed(const c10::OperatorHandle& op, const py::args& args, const py::kwargs& kwargs) {
  const c10::FunctionSchema& schema = op.schema();
  const auto& arguments = schema.arguments();
  TORCH_CHECK_TYPE(args.size() <= arguments.size(), schema.name(), "() takes at most ", arguments.size(),
                   " arguments, got ", args.size());
  torch::jit::Stack stack;
  stack.reserve(arguments.size());
  for (size_t i = 0; i < args.size(); ++i) {
    TORCH_CHECK_TYPE(!arguments[i].kwarg_only(), schema.name(), "() takes argument '", arguments[i].name(),
                     "' by keyword only");
    stack.push_back(torch::jit::argumentToIValue(schema, i, args[i]));
  }
  for (size_t i = args.size(); i < arguments.size(); ++i)
    stack.push_back(arguments[i].default_value().value_or(c10::IValue()));
  std::vector<bool> given(arguments.size(), false);
  for (const auto& [key, value] : kwargs) {
    const auto name = py::cast<std::string>(key);
    const std::optional<int> index = schema.argumentIndexWithName(name);
    TORCH_CHECK_TYPE(index.has_value(), schema.name(), "() got an unexpected keyword argument '", name, "'");
    TORCH_CHECK_TYPE(static_cast<size_t>(*index) >= args.size() && !given[*index], schema.name(),
                     "() got multiple values for argument '", name, "'");
    stack[*index] = torch::jit::argumentToIValue(schema, *index, value);
    given[*index] = true;
  }
  for (size_t i = args.size(); i < arguments.size(); ++i) {
    TORCH_CHECK_TYPE(given[i] || arguments[i].default_value().has_value(), schema.name(), "() is missing argument '",
                     arguments[i].name(), "'");
  }
  {
    py::gil_scoped_release no_gil;
    op.callBoxed(&stack);
  }
  return torch::jit::createPyObjectForStack(std::move(stack));
}

}  // namespace

void define_eager_caller(py::module_& m) {
  m.def(
      "eager_caller",
      [](const std::string& name) {
        const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(("pe_ext::" + name).c_str(), "");
        return py::cpp_function(
            [op](const py::args& args, const py::kwargs& kwargs) { return call_boxed(op, args, kwargs); });
      },
      "A callable for torch.ops.pe_ext.<name>.default that skips torch.ops' Python-level work (see eager_call.cpp)");
}

}  // namespace pe_ext
