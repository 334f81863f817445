// Test only: runs the CUDA kernel's per-thread body (cuda/pe_kernel.cuh) over the launch grid the CUDA host code
// computes, serially on the CPU. It checks the GPU's indexing, vector widths, alignment fallbacks and tails in CI,
// where no GPU exists. num_sms stands in for the device's multiprocessor count, which shapes the grid.
#include <torch/library.h>

#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"
#include "sinusoidal/ops.h"

namespace pe_ext::cuda_kernel {
namespace {

void run_grid(const AddPeProblem& p, int64_t num_sms) {
  TORCH_CHECK_VALUE(num_sms > 0, "pe_ext: num_sms must be positive, got ", num_sms);
  if (p.out.numel() == 0) return;
  dispatch_add_pe(p, static_cast<int>(num_sms), [&](auto vec_tag, auto extras_tag, const auto& args,
                                                    const LaunchConfig& config) {
    constexpr int kVec = decltype(vec_tag)::value;
    constexpr bool kExtras = decltype(extras_tag)::value;
    for (int64_t block_y = 0; block_y < config.blocks_y; ++block_y)
      for (int64_t block_x = 0; block_x < config.blocks_x; ++block_x)
        for (int thread_y = 0; thread_y < config.threads_y; ++thread_y)
          for (int thread_x = 0; thread_x < config.threads_x; ++thread_x)
            add_pe_thread<kVec, kExtras>(args, config, block_x, block_y, thread_x, thread_y);
  });
}

void cuda_grid_emulator(const at::Tensor& out, const c10::optional<at::Tensor>& x,
                        const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale, int64_t seq_dim,
                        int64_t num_sms, PE_KEYWORD_PARAMS) {
  if (x.has_value() && x->defined()) {
    run_grid(prepare_add_pe(*x, table, offset.expect_int(), scale, seq_dim, PE_KEYWORD_ARGS, out, Write::kOut), num_sms);
  } else {
    run_grid(prepare_fill_table(out, offset.expect_int(), PE_KEYWORD_ARGS), num_sms);
  }
}

}  // namespace
}  // namespace pe_ext::cuda_kernel

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) {
  m.impl("_cuda_grid_emulator", &pe_ext::cuda_kernel::cuda_grid_emulator);
}
