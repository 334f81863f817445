// Test only (built with PE_EXT_TESTING=1): runs the CUDA kernel's per-thread body (cuda/kernel.cuh) over the launch
// grid the CUDA host code computes, serially on the CPU. It checks the GPU's indexing, vector widths, alignment
// fallbacks and tails in CI, where no GPU exists. num_sms stands in for the device's multiprocessor count, which
// shapes the grid.
#include "common/no_fp_contract.h"  // first: the body's products and sums rounded once each, as on the GPU

#include <torch/library.h>

#include "common/grid_emulator.h"
#include "rotary/cuda/kernel.cuh"
#include "rotary/cuda/launch.h"
#include "rotary/ops.h"

namespace pe_ext::rotary::cuda {
namespace {

// With q: rotary of q and k written into q_out and k_out; without: rotary_ of q_out and k_out in place.
void rotary_grid_emulator(const at::Tensor& q_out, const c10::optional<at::Tensor>& k_out,
                          const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
                          int64_t num_sms PE_ROTARY_OPTIONS_PARAMS) {
  TORCH_CHECK_VALUE(num_sms > 0, "pe_ext: num_sms must be positive, got ", num_sms);
  const RotaryOptions options = PE_ROTARY_OPTIONS_STRUCT;
  const at::Tensor no_tensor;
  const RotaryProblem p = q.has_value() ? prepare_rotary(*q, k, options, q_out, k_out.value_or(no_tensor), false)
                                        : prepare_rotary(q_out, k_out, options, q_out, k_out.value_or(no_tensor), true);
  if (p.batch() == 0 || p.seq_len() == 0) return;
  dispatch_rotary(p, static_cast<int>(num_sms),
                  [&](auto vec, auto tables, auto style, const auto& args, const LaunchConfig& config) {
                    emulate_grid(config.grid, [&](int64_t block_x, int64_t block_y, int thread_x, int thread_y) {
                      rotary_thread<decltype(vec)::value, decltype(tables)::value, decltype(style)::value>(
                          args, config, block_x, block_y, thread_x, thread_y);
                    });
                  });
}

}  // namespace
}  // namespace pe_ext::rotary::cuda

TORCH_LIBRARY_FRAGMENT(pe_ext, m) {
  m.def(
      "_rotary_grid_emulator(Tensor(a!) q_out, Tensor(b!)? k_out, Tensor? q, Tensor? k, int num_sms, "
      "*" PE_ROTARY_OPTIONS_SCHEMA ") -> ()");
}

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { m.impl("_rotary_grid_emulator", &pe_ext::rotary::cuda::rotary_grid_emulator); }
