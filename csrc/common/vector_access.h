// 16-byte vector loads and stores for the CUDA kernels' per-thread bodies, which the grid emulator also runs on the
// CPU: there as memcpy, after checking the alignment the GPU's vector access needs, so that a launch the host code
// wrongly let vectorize fails in CI instead of faulting on a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#if !defined(__CUDA_ARCH__)
#include <c10/util/Exception.h>
#endif

#include "common/host_device.h"

namespace pe_ext {

// The widest vector of T one 16-byte access moves.
template <typename T>
constexpr int kMaxVec = 16 / static_cast<int>(sizeof(T));

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T v[N];
};

#if !defined(__CUDA_ARCH__)
// The emulator's stand-in for the GPU's misaligned-address fault.
template <int N, typename T>
void check_vector_alignment(const T* address) {
  TORCH_INTERNAL_ASSERT(N == 1 || reinterpret_cast<std::uintptr_t>(address) % (sizeof(T) * N) == 0, "pe_ext: a ",
                        sizeof(T) * N, "-byte vector access at an address that is not ", sizeof(T) * N,
                        "-byte aligned (", static_cast<const void*>(address),
                        "); the launch should have taken the element-wise path");
}
#endif

// N contiguous elements; one vector access when N > 1 (the host guarantees alignment for such launches).
template <int N, typename T>
PE_HOST_DEVICE void load_span(const T* src, T (&dst)[N]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<AlignedVector<T, N>*>(dst) = *reinterpret_cast<const AlignedVector<T, N>*>(src);
#else
  check_vector_alignment<N>(src);
  std::memcpy(dst, src, sizeof(T) * N);
#endif
}

template <int N, typename T>
PE_HOST_DEVICE void store_span(T* dst, const T (&src)[N]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<AlignedVector<T, N>*>(dst) = *reinterpret_cast<const AlignedVector<T, N>*>(src);
#else
  check_vector_alignment<N>(dst);
  std::memcpy(dst, src, sizeof(T) * N);
#endif
}

}  // namespace pe_ext
