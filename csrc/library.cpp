// The one TORCH_LIBRARY of pe_ext: one line per op family declares its ops (each family's define() lives in
// csrc/<family>/ops.cpp; its kernels register themselves beside their code with TORCH_LIBRARY_IMPL), and the Python
// module's build information.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "common/eager_call.h"
#include "rotary/ops.h"
#include "sinusoidal/ops.h"

TORCH_LIBRARY(pe_ext, m) {
  pe_ext::sinusoidal::define(m);
  pe_ext::rotary::define(m);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pe_ext compiled ops; loading this module registers torch.ops.pe_ext.*";
  pe_ext::define_eager_caller(m);
  m.def(
      "built_with_cuda",
      [] {
#ifdef PE_EXT_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this build");
  m.def(
      "built_with_testing_ops",
      [] {
#ifdef PE_EXT_TESTING
        return true;
#else
        return false;
#endif
      },
      "Whether the test-only ops (the CUDA grid emulators, PE_EXT_TESTING=1) were compiled into this build");
}
