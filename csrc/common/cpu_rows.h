// Pieces of the CPU kernels' row loops that every op family can use: elements handled as their storage bits with
// branch-free conversions to the type they compute in (so that the compiler vectorizes the loops that use them),
// per-ISA clones of those loops, and non-temporal stores.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

// Builds a row function for AVX-512, AVX2 and baseline x86-64, chosen at load time by ISA level (x86-64-v4, -v3):
// "arch=haswell" would be chosen only on a CPU that is a Haswell, so other AVX2 CPUs (Zen 1-3, Skylake, Alder Lake)
// ran the baseline SSE2 clone. The AVX-512 clone uses 256-bit vectors (setup.py: -mprefer-vector-width=256). The
// sanitized build keeps the baseline only, so that the code path it tests is the portable one.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PE_EXT_SANITIZE)
#define PE_ROW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PE_ROW_CLONES
#endif

namespace pe_ext::cpu {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline uint16_t float_to_bf16(float value) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return value != value ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

// An element of scalar_t as its storage bits, and its conversions to and from at::opmath_type<scalar_t>.
template <typename scalar_t>
struct Element {  // float, double: stored as computed
  using storage = scalar_t;
  using acc = at::opmath_type<scalar_t>;
  static acc load(storage v) { return v; }
  static storage store(acc v) { return v; }
};

template <>
struct Element<c10::BFloat16> {
  using storage = uint16_t;
  using acc = at::opmath_type<c10::BFloat16>;
  static acc load(storage v) { return bf16_to_float(v); }
  static storage store(acc v) { return float_to_bf16(v); }
};

template <>
struct Element<c10::Half> {  // c10's portable IEEE conversions (GCC 12 does not vectorize F16C ones here)
  using storage = uint16_t;
  using acc = at::opmath_type<c10::Half>;
  static acc load(storage v) { return c10::detail::fp16_ieee_to_fp32_value(v); }
  static storage store(acc v) { return c10::detail::fp16_ieee_from_fp32_value(v); }
};

template <typename scalar_t>
using storage_t = typename Element<scalar_t>::storage;

template <typename scalar_t>
storage_t<scalar_t>* bits_of(scalar_t* p) {
  return reinterpret_cast<storage_t<scalar_t>*>(p);
}
template <typename scalar_t>
const storage_t<scalar_t>* bits_of(const scalar_t* p) {
  return reinterpret_cast<const storage_t<scalar_t>*>(p);
}

// --- Rows written with AVX2 intrinsics, 8 elements per step, chosen at run time (has_avx2_rows()) rather than cloned:
// the intrinsics need their target in every function that uses them. Two cases where the compiled loops fall short:
// float16 rows (GCC 12 converts halves one at a time, even from vector types, and c10's portable conversions, which
// it does vectorize, cost about twice torch's own float16 add), and rows written with non-temporal stores (computing
// into scratch first, then streaming it out, is a second pass). kStream: non-temporal stores (aligned ones: the head
// before the first 32-byte boundary is stored as usual). The sanitized build keeps the compiled loops.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PE_EXT_SANITIZE)
inline bool has_avx2_rows() {
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
}

// Elements before out's first `alignment`-byte boundary (all of them if there is none within n).
template <typename T>
int64_t unaligned_head(const T* out, int64_t n, uintptr_t alignment) {
  const uintptr_t misalignment = reinterpret_cast<uintptr_t>(out) % alignment;
  return misalignment == 0 ? 0 : std::min<int64_t>(n, (alignment - misalignment) / sizeof(T));
}

// fma(x[j], factor, pe[j]) for j < 8.
__attribute__((target("avx2,fma"))) inline __m256 scale_add8(const float* x, const float* pe, __m256 factor) {
  return _mm256_fmadd_ps(_mm256_loadu_ps(x), factor, _mm256_loadu_ps(pe));
}

// out[j] = fma(x[j], scale, pe[j]) in float32; out may be x. prefetch_ahead > 0 (cached stores): each 64-byte line of
// out that many elements ahead (within the row) is prefetched first, so that a store rarely waits for its line: the
// hardware prefetchers run ahead of loads, not of stores. (A read prefetch: prefetchw is a CPUID feature that not
// every AVX2 CPU reports, Haswell for one, and a line no other core holds arrives writable anyway.)
template <bool kStream>
__attribute__((target("avx2,fma"))) inline void avx2_scale_add_row(const float* x, const float* pe, float scale,
                                                                   float* out, int64_t n, int64_t prefetch_ahead = 0) {
  int64_t j = kStream ? unaligned_head(out, n, 32) : 0;
  for (int64_t i = 0; i < j; ++i) out[i] = std::fma(x[i], scale, pe[i]);
  const __m256 factor = _mm256_set1_ps(scale);
  if (!kStream && prefetch_ahead > 0) {
    for (; j + 16 <= n; j += 16) {  // 16 floats: one line
      _mm_prefetch(reinterpret_cast<const char*>(out + std::min(j + prefetch_ahead, n - 1)), _MM_HINT_T0);
      _mm256_storeu_ps(out + j, scale_add8(x + j, pe + j, factor));
      _mm256_storeu_ps(out + j + 8, scale_add8(x + j + 8, pe + j + 8, factor));
    }
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 sum = scale_add8(x + j, pe + j, factor);
    if constexpr (kStream) {
      _mm256_stream_ps(out + j, sum);
    } else {
      _mm256_storeu_ps(out + j, sum);
    }
  }
  for (; j < n; ++j) out[j] = std::fma(x[j], scale, pe[j]);
}

// The same for float16 storage bits: out[j] = half(fma(float(x[j]), scale, pe[j])), rounded to nearest even as
// c10's conversion; out may be x.
template <bool kStream>
__attribute__((target("avx2,fma,f16c"))) inline void f16c_scale_add_row(const uint16_t* x, const float* pe, float scale,
                                                                        uint16_t* out, int64_t n) {
  int64_t j = kStream ? unaligned_head(out, n, 16) : 0;
  for (int64_t i = 0; i < j; ++i)
    out[i] = _cvtss_sh(std::fma(_cvtsh_ss(x[i]), scale, pe[i]), _MM_FROUND_TO_NEAREST_INT);
  const __m256 factor = _mm256_set1_ps(scale);
  for (; j + 8 <= n; j += 8) {
    const __m256 value = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j)));
    const __m256 sum = _mm256_fmadd_ps(value, factor, _mm256_loadu_ps(pe + j));
    const __m128i half = _mm256_cvtps_ph(sum, _MM_FROUND_TO_NEAREST_INT);
    if constexpr (kStream) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + j), half);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), half);
    }
  }
  for (; j < n; ++j) out[j] = _cvtss_sh(std::fma(_cvtsh_ss(x[j]), scale, pe[j]), _MM_FROUND_TO_NEAREST_INT);
}
#else  // never called (has_avx2_rows() is false): they only keep the callers' code one for every build
inline bool has_avx2_rows() { return false; }
template <bool kStream>
void avx2_scale_add_row(const float*, const float*, float, float*, int64_t, int64_t = 0) {}
template <bool kStream>
void f16c_scale_add_row(const uint16_t*, const float*, float, uint16_t*, int64_t) {}
#endif

// --- Non-temporal stores. An output larger than the cache is evicted before anyone reads it again; writing it with
// streaming stores skips reading each destination line into the cache first, which ordinary stores do: for a
// read-one-write-one op that is a third of the memory traffic. Rows that the AVX2 ones above do not cover are
// computed into scratch in L1, then streamed.
#if defined(__x86_64__) || defined(_M_X64)
constexpr bool kCanStream = true;

inline void stream_store(void* dst, const void* src, int64_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
  std::memcpy(d, s, head);
  for (int64_t i = head; i + 16 <= bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  }
  const int64_t tail = head + (bytes - head) / 16 * 16;
  std::memcpy(d + tail, s + tail, bytes - tail);
}

inline void stream_fence() { _mm_sfence(); }  // streaming stores are weakly ordered: publish them before a task ends
#else
constexpr bool kCanStream = false;
inline void stream_store(void* dst, const void* src, int64_t bytes) { std::memcpy(dst, src, bytes); }
inline void stream_fence() {}
#endif

// --- Huge pages for an output nothing has touched yet. glibc maps every block of 32 MiB and more afresh and unmaps it
// when freed, so a plain process page-faults each call's output in again, 4 KiB at a time: for a 128 MiB output
// 32768 faults, which cost three times the add itself on the benchmark machine (bench/README.md). Transparent huge
// pages make that 64 faults; with THP set to "madvise" (the kernel's default, and many distributions') they need this
// advice, "always" gives them anyway, "never" ignores it. Memory already in use (mincore: its first page is present)
// is left alone, so that reused heap blocks and callers' buffers keep their mappings as they are.
inline void advise_huge_pages_if_untouched(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (bytes <= 0 || first + kHugePage > last) return;  // no whole huge page inside
  unsigned char present = 1;
  if (mincore(reinterpret_cast<void*>(first), 1, &present) != 0 || (present & 1)) return;
  madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice: a refusal changes nothing
#endif
}

}  // namespace pe_ext::cpu
