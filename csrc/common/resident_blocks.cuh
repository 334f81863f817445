// How many blocks of a kernel a device runs at once, to size grids to one wave of the kernel's real occupancy (its
// registers decide it: a fixed blocks-per-multiprocessor guess over- or under-fills the device as they change).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAMacros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

namespace pe_ext {

// The multiprocessors of `device` (the current device) times the blocks of kKernel, launched with kThreads threads
// and no dynamic shared memory, that one of them holds, as the CUDA runtime computes it. Asked once per kernel and
// device: a launch must stay cheap (decoding launches once per token).
template <auto kKernel, int kThreads>
int64_t resident_blocks(int device) {
  static std::array<std::atomic<int64_t>, C10_COMPILE_TIME_MAX_GPUS> cache{};  // 0: not asked yet
  std::atomic<int64_t>& cached = cache.at(device);
  int64_t blocks = cached.load(std::memory_order_relaxed);
  if (blocks == 0) {
    int multiprocessors = 0, per_multiprocessor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kKernel, kThreads, 0));
    blocks = static_cast<int64_t>(multiprocessors) * std::max(per_multiprocessor, 1);
    cached.store(blocks, std::memory_order_relaxed);
  }
  return blocks;
}

}  // namespace pe_ext
