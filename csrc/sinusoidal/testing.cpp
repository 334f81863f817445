// Test only (built with PE_EXT_TESTING=1): runs the CUDA kernel's per-thread body (cuda/kernel.cuh) over the launch
// grid the CUDA host code computes, serially on the CPU. It checks the GPU's indexing, vector widths, alignment
// fallbacks and tails in CI, where no GPU exists. The grid is sized as on a GPU of num_sms multiprocessors, each
// holding the kernel's __launch_bounds__ minimum of blocks (KernelSpec::kMinBlocksPerSm), which stands in for the
// occupancy the CUDA runtime reports.
#include <torch/library.h>

#include <algorithm>

#include "common/grid_emulator.h"
#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal::cuda {
namespace {

void run_grid(const SinusoidalProblem& p, int64_t num_sms) {
  TORCH_CHECK_VALUE(num_sms > 0, "pe_ext: num_sms must be positive, got ", num_sms);
  if (p.out.numel() == 0) return;
  dispatch_add_pe(p, [&](auto spec, const auto& args) {
    using K = decltype(spec);
    const LaunchConfig config =
        make_launch_config(p.batch(), p.seq_len(), p.d_model(), K::kVec, num_sms * K::kMinBlocksPerSm);
    emulate_grid(config.grid, [&](int64_t block_x, int64_t block_y, int thread_x, int thread_y) {
      add_pe_thread<K>(args, config, block_x, block_y, thread_x, thread_y);
    });
  });
}

// With x: add_pe written into out (in place when out is x); without: fill_table_. The seed is read the way the kernel
// reads a seed that lives on the GPU (through its pointer), which the real launch takes only for CUDA seed tensors.
// table_rows >= 0 lets the kernel see only the table's first table_rows rows after the host's checks passed, as when
// the host could not read the positions (CUDA graph capture): positions beyond them must trip the kernel's own check.
void add_pe_grid_emulator(const at::Tensor& out, const c10::optional<at::Tensor>& x,
                          const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale, int64_t seq_dim,
                          int64_t num_sms, int64_t table_rows PE_SINUSOIDAL_OPTIONS_PARAMS) {
  const SinusoidalOptions options = PE_SINUSOIDAL_OPTIONS_STRUCT;
  SinusoidalProblem p = x.has_value() && x->defined()
                            ? prepare_add_pe(*x, table, offset.expect_int(), scale, seq_dim, options, out,
                                             x->is_same(out) ? Write::kInPlace : Write::kOut)
                            : prepare_fill_table(out, offset.expect_int(), options);
  if (p.dropout > 0) {
    p.seed_on_device = seed->reshape({});
    p.seed = 0;  // unused: the kernel must read the pointer
  }
  if (table_rows >= 0 && p.table.defined()) p.table = p.table.narrow(-2, 0, std::min(table_rows, p.table_rows()));
  run_grid(p, num_sms);
}

}  // namespace
}  // namespace pe_ext::sinusoidal::cuda

TORCH_LIBRARY_FRAGMENT(pe_ext, m) {
  m.def(
      "_add_pe_grid_emulator(Tensor(a!) out, Tensor? x, Tensor? table, SymInt offset, float scale, int seq_dim, "
      "int num_sms, int table_rows=-1, *" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> ()");
}

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { m.impl("_add_pe_grid_emulator", &pe_ext::sinusoidal::cuda::add_pe_grid_emulator); }
