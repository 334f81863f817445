// Vector loads and stores for the CUDA kernels' per-thread bodies, which the grid emulator also runs on the CPU: there
// as memcpy, after checking the alignment the GPU's vector access needs, so that a launch the host code wrongly let
// vectorize fails in CI instead of faulting on a GPU.
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

// N values of T as a thread holds them between a load and a store: whole 32-bit words, two 16-bit values to a word.
// Held as separate 16-bit values (an array of c10::BFloat16, say), a row of 8 takes 8 registers instead of 4. N == 1
// of a 16-bit T uses the low half of one word.
template <typename T, int N>
struct PackedVector {
  static_assert(sizeof(T) == 2 || sizeof(T) % 4 == 0, "16-bit, 32-bit or 64-bit values");
  static constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  static constexpr int kWords = (kBytes + 3) / 4;
  uint32_t w[kWords];

  PE_HOST_DEVICE T get(int k) const {
    T value;
    if constexpr (sizeof(T) == 2) {
      const auto bits = static_cast<uint16_t>(w[k / 2] >> (16 * (k % 2)));
      std::memcpy(&value, &bits, 2);
    } else {
      std::memcpy(&value, &w[k * sizeof(T) / 4], sizeof(T));
    }
    return value;
  }

  PE_HOST_DEVICE void set(int k, T value) {
    if constexpr (sizeof(T) == 2) {
      uint16_t bits;
      std::memcpy(&bits, &value, 2);
      const int shift = 16 * (k % 2);
      w[k / 2] = (w[k / 2] & ~(0xffffu << shift)) | (static_cast<uint32_t>(bits) << shift);
    } else {
      std::memcpy(&w[k * sizeof(T) / 4], &value, sizeof(T));
    }
  }
};

#if defined(__CUDA_ARCH__)
// One access of kBytes (at most 16: larger vectors take several), as the built-in type that moves it in one
// instruction. Stores are written out as instructions: a plain store of a vector, even typed uint4, can reach the
// code generator split into 32-bit stores when its values come from selects or several paths (seen: 4 STG.E where one
// STG.E.128 was meant). Global memory only (the kernels' tensors).
template <int kBytes>
struct Access;
template <>
struct Access<16> {
  using type = uint4;
  static __device__ __forceinline__ void store(type* dst, type v) {
    asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
  }
};
template <>
struct Access<8> {
  using type = uint2;
  static __device__ __forceinline__ void store(type* dst, type v) {
    asm("st.global.v2.b32 [%0], {%1, %2};" ::"l"(dst), "r"(v.x), "r"(v.y));
  }
};
template <>
struct Access<4> {
  using type = uint32_t;
  static __device__ __forceinline__ void store(type* dst, type v) { *dst = v; }
};
template <>
struct Access<2> {
  using type = uint16_t;
  static __device__ __forceinline__ void store(type* dst, type v) { *dst = v; }
};
#else
// The emulator's stand-in for the GPU's misaligned-address fault.
template <int N, typename T>
void check_vector_alignment(const T* address) {
  TORCH_INTERNAL_ASSERT(N == 1 || reinterpret_cast<std::uintptr_t>(address) % (sizeof(T) * N) == 0, "pe_ext: a ",
                        sizeof(T) * N, "-byte vector access at an address that is not ", sizeof(T) * N,
                        "-byte aligned (", static_cast<const void*>(address),
                        "); the launch should have taken the element-wise path");
}
#endif

// N contiguous elements in accesses of up to 16 bytes; the host guarantees the alignment of vectorized launches.
template <int N, typename T>
PE_HOST_DEVICE PackedVector<T, N> load_packed(const T* src) {
  using Packed = PackedVector<T, N>;
  Packed v;
#if defined(__CUDA_ARCH__)
  using A = Access<(Packed::kBytes < 16 ? Packed::kBytes : 16)>;
  constexpr int kAccesses = Packed::kBytes / static_cast<int>(sizeof(typename A::type));
  typename A::type parts[kAccesses];
  PE_UNROLL
  for (int i = 0; i < kAccesses; ++i) parts[i] = reinterpret_cast<const typename A::type*>(src)[i];
  v.w[Packed::kWords - 1] = 0;  // a lone 16-bit value fills half a word
  std::memcpy(v.w, parts, Packed::kBytes);
#else
  check_vector_alignment<N>(src);
  v.w[Packed::kWords - 1] = 0;
  std::memcpy(v.w, src, Packed::kBytes);
#endif
  return v;
}

template <int N, typename T>
PE_HOST_DEVICE void store_packed(T* dst, const PackedVector<T, N>& v) {
  using Packed = PackedVector<T, N>;
#if defined(__CUDA_ARCH__)
  using A = Access<(Packed::kBytes < 16 ? Packed::kBytes : 16)>;
  constexpr int kAccesses = Packed::kBytes / static_cast<int>(sizeof(typename A::type));
  typename A::type parts[kAccesses];
  std::memcpy(parts, v.w, Packed::kBytes);
  PE_UNROLL
  for (int i = 0; i < kAccesses; ++i) A::store(reinterpret_cast<typename A::type*>(dst) + i, parts[i]);
#else
  check_vector_alignment<N>(dst);
  std::memcpy(dst, v.w, Packed::kBytes);
#endif
}

// The same, for arrays.
template <int N, typename T>
PE_HOST_DEVICE void load_span(const T* src, T (&dst)[N]) {
  const PackedVector<T, N> v = load_packed<N>(src);
  PE_UNROLL
  for (int k = 0; k < N; ++k) dst[k] = v.get(k);
}

template <int N, typename T>
PE_HOST_DEVICE void store_span(T* dst, const T (&src)[N]) {
  PackedVector<T, N> v{};
  PE_UNROLL
  for (int k = 0; k < N; ++k) v.set(k, src[k]);
  store_packed<N>(dst, v);
}

}  // namespace pe_ext
