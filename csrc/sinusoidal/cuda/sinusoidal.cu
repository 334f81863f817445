// CUDA kernels: thin __global__ wrappers around pe_kernel.cuh, launched on the current stream of x's device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "sinusoidal/ops.h"
#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/cuda/launch.h"

namespace pe_ext::cuda_kernel {
namespace {

template <int VEC, bool kExtras, typename scalar_t, typename table_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    add_pe_kernel(const AddPeArgs<scalar_t, table_t> args, const LaunchConfig config) {
  add_pe_thread<VEC, kExtras>(args, config, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y);
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

void add_pe_cuda(const AddPeProblem& p) {
  if (p.out.numel() == 0) return;
  const c10::cuda::CUDAGuard device_guard(p.out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_add_pe(p, multiprocessor_count(p.out.get_device()), [&](auto vec_tag, auto extras_tag, const auto& args,
                                                                    const LaunchConfig& config) {
    constexpr int kVec = decltype(vec_tag)::value;
    constexpr bool kExtras = decltype(extras_tag)::value;
    const dim3 grid(static_cast<unsigned>(config.blocks_x), static_cast<unsigned>(config.blocks_y));
    const dim3 block(config.threads_x, config.threads_y);
    add_pe_kernel<kVec, kExtras><<<grid, block, 0, stream>>>(args, config);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace pe_ext::cuda_kernel

TORCH_LIBRARY_IMPL(pe_ext, CUDA, m) {
  using pe_ext::cuda_kernel::add_pe_cuda;
  m.impl("add_pe", &pe_ext::add_pe_op<add_pe_cuda>);
  m.impl("add_pe_", &pe_ext::add_pe_inplace_op<add_pe_cuda>);
  m.impl("add_pe_out", &pe_ext::add_pe_out_op<add_pe_cuda>);
  m.impl("fill_table_", &pe_ext::fill_table_op<add_pe_cuda>);
}
