// 16-byte vector loads and stores for the CUDA kernels' per-thread bodies, which the grid emulator also runs on the
// CPU (there as memcpy).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace pe_ext {

// The widest vector of T one 16-byte access moves.
template <typename T>
constexpr int kMaxVec = 16 / static_cast<int>(sizeof(T));

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T v[N];
};

// N contiguous elements; one vector access when N > 1 (the host guarantees alignment for such launches).
template <int N, typename T>
PE_HOST_DEVICE void load_span(const T* src, T (&dst)[N]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<AlignedVector<T, N>*>(dst) = *reinterpret_cast<const AlignedVector<T, N>*>(src);
#else
  std::memcpy(dst, src, sizeof(T) * N);
#endif
}

template <int N, typename T>
PE_HOST_DEVICE void store_span(T* dst, const T (&src)[N]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<AlignedVector<T, N>*>(dst) = *reinterpret_cast<const AlignedVector<T, N>*>(src);
#else
  std::memcpy(dst, src, sizeof(T) * N);
#endif
}

}  // namespace pe_ext
