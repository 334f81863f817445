// CUDA kernels: thin __global__ wrappers around kernel.cuh's per-thread body, launched on the current stream of x's
// device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal::cuda {
namespace {

template <int VEC, Variant kVariant, typename scalar_t, typename table_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    add_pe_kernel(const AddPeArgs<scalar_t, table_t, position_t<kVariant>> args, const LaunchConfig config) {
  add_pe_thread<VEC, kVariant>(args, config, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y);
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void add_pe_cuda(const SinusoidalProblem& p) {
  if (p.out.numel() == 0) return;
  const c10::cuda::CUDAGuard device_guard(p.out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_add_pe(
      p, multiprocessor_count(p.out.get_device()),
      [&](auto vec, auto variant, const auto& args, const LaunchConfig& config) {
        const dim3 grid(static_cast<unsigned>(config.grid.blocks_x), static_cast<unsigned>(config.grid.blocks_y));
        const dim3 block(config.grid.threads_x, config.grid.threads_y);
        add_pe_kernel<decltype(vec)::value, decltype(variant)::value><<<grid, block, 0, stream>>>(args, config);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace
}  // namespace pe_ext::sinusoidal::cuda

TORCH_LIBRARY_IMPL(pe_ext, CUDA, m) { pe_ext::sinusoidal::register_kernels<pe_ext::sinusoidal::cuda::add_pe_cuda>(m); }
