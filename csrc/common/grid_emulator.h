// Runs a CUDA kernel's per-thread body, a __host__ __device__ function of (block, thread) indices, over its launch
// grid serially on the CPU. Tests register it as an op beside each kernel (csrc/<op>/testing.cpp), so that CI, which
// has no GPU, exercises the grid mapping, vector widths, alignment fallbacks and tails of every CUDA kernel.
#pragma once

#include <cstdint>

namespace pe_ext {

// A two-dimensional launch: gridDim (blocks_x, blocks_y), blockDim (threads_x, threads_y).
struct LaunchGrid {
  int64_t blocks_x = 1, blocks_y = 1;
  int threads_x = 1, threads_y = 1;
};

// Calls thread_body(block_x, block_y, thread_x, thread_y) for every thread of the grid.
template <typename ThreadBody>
void emulate_grid(const LaunchGrid& grid, ThreadBody&& thread_body) {
  for (int64_t block_y = 0; block_y < grid.blocks_y; ++block_y)
    for (int64_t block_x = 0; block_x < grid.blocks_x; ++block_x)
      for (int thread_y = 0; thread_y < grid.threads_y; ++thread_y)
        for (int thread_x = 0; thread_x < grid.threads_x; ++thread_x) thread_body(block_x, block_y, thread_x, thread_y);
}

}  // namespace pe_ext
