// CUDA kernel: a thin __global__ wrapper around kernel.cuh's per-thread body, launched on the current stream of q's
// device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "rotary/cuda/kernel.cuh"
#include "rotary/cuda/launch.h"
#include "rotary/ops.h"

namespace pe_ext::rotary::cuda {
namespace {

template <int VEC, bool kTables, Style kStyle, typename scalar_t, typename table_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    rotary_kernel(const RotaryArgs<scalar_t, table_t> args, const LaunchConfig config) {
  rotary_thread<VEC, kTables, kStyle>(args, config, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y);
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void rotary_cuda(const RotaryProblem& p) {
  if (p.batch() == 0 || p.seq_len() == 0) return;
  const c10::cuda::CUDAGuard device_guard(p.q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_rotary(p, multiprocessor_count(p.q.get_device()),
                  [&](auto vec, auto tables, auto style, const auto& args, const LaunchConfig& config) {
                    const dim3 grid(static_cast<unsigned>(config.grid.blocks_x),
                                    static_cast<unsigned>(config.grid.blocks_y));
                    const dim3 block(config.grid.threads_x, config.grid.threads_y);
                    rotary_kernel<decltype(vec)::value, decltype(tables)::value, decltype(style)::value>
                        <<<grid, block, 0, stream>>>(args, config);
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                  });
}

}  // namespace
}  // namespace pe_ext::rotary::cuda

TORCH_LIBRARY_IMPL(pe_ext, CUDA, m) { pe_ext::rotary::register_kernels<pe_ext::rotary::cuda::rotary_cuda>(m); }
