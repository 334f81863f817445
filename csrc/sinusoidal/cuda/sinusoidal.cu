// CUDA kernels: thin __global__ wrappers around kernel.cuh's per-thread body, launched on the current stream of x's
// device with a grid sized to the kernel's occupancy.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "common/resident_blocks.cuh"
#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal::cuda {
namespace {

template <typename K>
__global__ void __launch_bounds__(kThreadsPerBlock, K::kMinBlocksPerSm)
    add_pe_kernel(const AddPeArgs<K> args, const LaunchConfig config) {
  add_pe_thread<K>(args, config, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y);
}

void add_pe_cuda(const SinusoidalProblem& p) {
  if (p.out.numel() == 0) return;
  const c10::cuda::CUDAGuard device_guard(p.out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_add_pe(p, [&](auto spec, const auto& args) {
    using K = decltype(spec);
    const LaunchConfig config =
        make_launch_config(p.batch(), p.seq_len(), p.d_model(), K::kVec,
                           resident_blocks<add_pe_kernel<K>, kThreadsPerBlock>(p.out.get_device()));
    const dim3 grid(static_cast<unsigned>(config.grid.blocks_x), static_cast<unsigned>(config.grid.blocks_y));
    const dim3 block(config.grid.threads_x, config.grid.threads_y);
    add_pe_kernel<K><<<grid, block, 0, stream>>>(args, config);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace pe_ext::sinusoidal::cuda

TORCH_LIBRARY_IMPL(pe_ext, CUDA, m) { pe_ext::sinusoidal::register_kernels<pe_ext::sinusoidal::cuda::add_pe_cuda>(m); }
