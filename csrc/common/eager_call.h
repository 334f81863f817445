// Calls of pe_ext's ops from Python without torch.ops' per-call overhead, for the eager calls that are
// overhead-bound (a decoding step). See eager_call.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace pe_ext {

// Adds eager_caller(name) to the extension module: a callable taking an op's arguments as torch.ops.pe_ext.<name>
// takes them.
void define_eager_caller(pybind11::module_& m);

}  // namespace pe_ext
