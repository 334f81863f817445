// Test only (built with PE_EXT_TESTING=1): runs the CUDA kernel's per-thread body (cuda/kernel.cuh) over the launch
// grid the CUDA host code computes, serially on the CPU. It checks the GPU's indexing, vector widths, alignment
// fallbacks and tails in CI, where no GPU exists. num_sms stands in for the device's multiprocessor count, which
// shapes the grid.
#include <torch/library.h>

#include "common/grid_emulator.h"
#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal::cuda {
namespace {

void run_grid(const SinusoidalProblem& p, int64_t num_sms) {
  TORCH_CHECK_VALUE(num_sms > 0, "pe_ext: num_sms must be positive, got ", num_sms);
  if (p.out.numel() == 0) return;
  dispatch_add_pe(p, static_cast<int>(num_sms),
                  [&](auto vec, auto variant, const auto& args, const LaunchConfig& config) {
                    emulate_grid(config.grid, [&](int64_t block_x, int64_t block_y, int thread_x, int thread_y) {
                      add_pe_thread<decltype(vec)::value, decltype(variant)::value>(args, config, block_x, block_y,
                                                                                    thread_x, thread_y);
                    });
                  });
}

// With x: add_pe written into out; without: fill_table_. The seed is read the way the kernel reads a seed that lives
// on the GPU (through its pointer), which the real launch takes only for CUDA seed tensors.
void add_pe_grid_emulator(const at::Tensor& out, const c10::optional<at::Tensor>& x,
                          const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale, int64_t seq_dim,
                          int64_t num_sms PE_SINUSOIDAL_OPTIONS_PARAMS) {
  const SinusoidalOptions options = PE_SINUSOIDAL_OPTIONS_STRUCT;
  SinusoidalProblem p = x.has_value() && x->defined()
                            ? prepare_add_pe(*x, table, offset.expect_int(), scale, seq_dim, options, out, Write::kOut)
                            : prepare_fill_table(out, offset.expect_int(), options);
  if (p.dropout > 0) {
    p.seed_on_device = seed->reshape({});
    p.seed = 0;  // unused: the kernel must read the pointer
  }
  run_grid(p, num_sms);
}

}  // namespace
}  // namespace pe_ext::sinusoidal::cuda

TORCH_LIBRARY_FRAGMENT(pe_ext, m) {
  m.def(
      "_add_pe_grid_emulator(Tensor(a!) out, Tensor? x, Tensor? table, SymInt offset, float scale, int seq_dim, "
      "int num_sms, *" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> ()");
}

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { m.impl("_add_pe_grid_emulator", &pe_ext::sinusoidal::cuda::add_pe_grid_emulator); }
