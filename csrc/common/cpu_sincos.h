// A vectorizable float sin/cos for the CPU kernels' row loops.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace pe_ext::cpu {

// PolynomialSinCos's constants, shared by its scalar and AVX-512 forms.
namespace polynomial_sin_cos {
constexpr double kTwoOverPi = 0.63661977236758134;
constexpr double kHalfPi = 1.5707963267948966;         // pi/2 rounded to double
constexpr double kHalfPiTail = 6.123233995736766e-17;  // pi/2 - kHalfPi
constexpr double kRoundingShift = 0x1.8p52;
// sin(r) = r + r^3 * (kSin[0] + kSin[1] r^2 + ...), cos(r) = 1 + r^2 * (kCos[0] + kCos[1] r^2 + ...), evaluated from
// the last coefficient. The last cos term multiplies by 1/12! rather than dividing by 12! (a vector division per
// angle): every float angle from 0 to 2^54 gives the same float sin and cos either way.
constexpr double kSin[] = {-1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880, -1.0 / 39916800};
constexpr double kCos[] = {-0.5, 1.0 / 24, -1.0 / 720, 1.0 / 40320, -1.0 / 3628800, 1.0 / 479001600};
constexpr int kSinTerms = sizeof(kSin) / sizeof(kSin[0]), kCosTerms = sizeof(kCos) / sizeof(kCos[0]);
}  // namespace polynomial_sin_cos

// sin and cos of a float angle as glibc's sinf/cosf give them (within an ulp), but branch-free, so that a row of
// them vectorizes: the angle is reduced modulo pi/2 in double (pi/2 in two parts, with FMAs: exact to ~1e-16 while
// |angle| < 2^50, kPolynomialAngleLimit), then sin and cos of the remainder (|r| <= pi/4) are Taylor polynomials in
// double (truncation error < 1e-11) rounded once to float. The quotient is rounded by adding 1.5 * 2^52, whose ulp
// is 1, rather than with rint (which the compiler does not vectorize while FP exceptions are honoured); the sum's
// low bits are the quotient mod 4, the quadrant.
struct PolynomialSinCos {
  C10_ALWAYS_INLINE void operator()(float angle, float* s, float* c) const {  // inlined, or no loop vectorizes
    using namespace polynomial_sin_cos;
    const double a = angle;
    const double shifted = a * kTwoOverPi + kRoundingShift;
    const double k = shifted - kRoundingShift;  // the nearest integer to a / (pi/2)
    uint64_t shifted_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
    const uint64_t quadrant = shifted_bits & 3;
    const double r = std::fma(-k, kHalfPiTail, std::fma(-k, kHalfPi, a));
    const double r2 = r * r;
    double sin_poly = kSin[kSinTerms - 1], cos_poly = kCos[kCosTerms - 1];
    for (int i = kSinTerms - 2; i >= 0; --i) sin_poly = sin_poly * r2 + kSin[i];
    for (int i = kCosTerms - 2; i >= 0; --i) cos_poly = cos_poly * r2 + kCos[i];
    const double sin_r = r * r2 * sin_poly + r, cos_r = r2 * cos_poly + 1.0;
    const double sin_a = quadrant & 1 ? cos_r : sin_r, cos_a = quadrant & 1 ? sin_r : cos_r;
    // Signs as factors: a selected negation is not if-converted, and the loop would not vectorize.
    const double sin_sign = quadrant & 2 ? -1.0 : 1.0, cos_sign = (quadrant + 1) & 2 ? -1.0 : 1.0;
    *s = static_cast<float>(sin_a * sin_sign);
    *c = static_cast<float>(cos_a * cos_sign);
  }
};
constexpr double kPolynomialAngleLimit = 0x1p50;

// --- PolynomialSinCos over runs of angles, 8 at a time in 512-bit vectors where the CPU has AVX-512 (chosen at run
// time, as cpu_rows.h's AVX2 rows). The compiled loops' AVX-512 clones use 256-bit vectors (setup.py), and double
// math in 512-bit ones halves the instructions: on the benchmark machine (Zen 4, one thread) rows of 256 pairs took
// 0.96 ns a pair against 1.64 in the compiled loop. Same arithmetic in the same order, with FMAs where the compiled
// loop contracts.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PE_EXT_SANITIZE)
inline bool has_avx512_sin_cos() {
  static const bool has =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return has;
}

#define PE_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512vl")))

// PolynomialSinCos of 8 angles.
PE_AVX512_TARGET inline void polynomial_sin_cos8(__m256 angles, __m256* s, __m256* c) {
  using namespace polynomial_sin_cos;
  const __m512d a = _mm512_maskz_cvtps_pd(0xFF, angles);  // maskz: GCC 12 warns on the unmasked forms
  const __m512d shift = _mm512_set1_pd(kRoundingShift);
  const __m512d shifted = _mm512_fmadd_pd(a, _mm512_set1_pd(kTwoOverPi), shift);
  const __m512d k = _mm512_sub_pd(shifted, shift);
  const __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(kHalfPiTail), _mm512_fnmadd_pd(k, _mm512_set1_pd(kHalfPi), a));
  const __m512d r2 = _mm512_mul_pd(r, r);
  __m512d sin_poly = _mm512_set1_pd(kSin[kSinTerms - 1]), cos_poly = _mm512_set1_pd(kCos[kCosTerms - 1]);
  for (int i = kSinTerms - 2; i >= 0; --i) sin_poly = _mm512_fmadd_pd(sin_poly, r2, _mm512_set1_pd(kSin[i]));
  for (int i = kCosTerms - 2; i >= 0; --i) cos_poly = _mm512_fmadd_pd(cos_poly, r2, _mm512_set1_pd(kCos[i]));
  const __m512d sin_r = _mm512_fmadd_pd(_mm512_mul_pd(r, r2), sin_poly, r);
  const __m512d cos_r = _mm512_fmadd_pd(r2, cos_poly, _mm512_set1_pd(1.0));
  // quadrant (the low bits of shifted) 1 and 3 swap sin and cos; sin is negative in quadrants 2 and 3, cos in 1 and 2
  const __m512i quadrant = _mm512_castpd_si512(shifted);
  const __mmask8 swap = _mm512_test_epi64_mask(quadrant, _mm512_set1_epi64(1));
  const __mmask8 sin_negative = _mm512_test_epi64_mask(quadrant, _mm512_set1_epi64(2));
  const __mmask8 cos_negative = _kxor_mask8(swap, sin_negative);
  const __m512d sign = _mm512_set1_pd(-0.0);
  const __m512d sin_a = _mm512_mask_blend_pd(swap, sin_r, cos_r), cos_a = _mm512_mask_blend_pd(swap, cos_r, sin_r);
  *s = _mm512_maskz_cvtpd_ps(0xFF, _mm512_mask_xor_pd(sin_a, sin_negative, sin_a, sign));
  *c = _mm512_maskz_cvtpd_ps(0xFF, _mm512_mask_xor_pd(cos_a, cos_negative, cos_a, sign));
}

// sin and cos of angles[0, n): kInterleaved, into first[2i] and first[2i + 1]; else into first[i] and second[i].
// The last step's missing lanes are masked off (loaded as zeros, never stored).
template <bool kInterleaved>
PE_AVX512_TARGET void avx512_sin_cos(const float* angles, int64_t n, float* first, float* second) {
  const __m512i pairs = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t lanes = std::min<int64_t>(8, n - i);
    const __mmask8 mask = static_cast<__mmask8>((1u << lanes) - 1);
    __m256 s, c;
    polynomial_sin_cos8(_mm256_maskz_loadu_ps(mask, angles + i), &s, &c);
    if constexpr (kInterleaved) {
      const __m512 both = _mm512_permutex2var_ps(_mm512_insertf32x8(_mm512_setzero_ps(), s, 0), pairs,
                                                 _mm512_insertf32x8(_mm512_setzero_ps(), c, 0));
      _mm512_mask_storeu_ps(first + 2 * i, static_cast<__mmask16>((1u << (2 * lanes)) - 1), both);
    } else {
      _mm256_mask_storeu_ps(first + i, mask, s);
      _mm256_mask_storeu_ps(second + i, mask, c);
    }
  }
}
#undef PE_AVX512_TARGET
#else  // never called (has_avx512_sin_cos() is false)
inline bool has_avx512_sin_cos() { return false; }
template <bool kInterleaved>
void avx512_sin_cos(const float*, int64_t, float*, float*) {}
#endif

// Runs of float angles (sinusoidal/math.h's ElementwiseSinCos interface) through PolynomialSinCos: with AVX-512
// where the CPU has it, else in the calling clone's compiled loop.
struct PolynomialSinCosRuns {
  C10_ALWAYS_INLINE void interleaved(const float* angles, int64_t n, float* out) const {
    if (has_avx512_sin_cos()) {
      avx512_sin_cos<true>(angles, n, out, nullptr);
      return;
    }
    for (int64_t i = 0; i < n; ++i) PolynomialSinCos()(angles[i], &out[2 * i], &out[2 * i + 1]);
  }
  C10_ALWAYS_INLINE void split(const float* angles, int64_t n, float* sin_out, float* cos_out) const {
    if (has_avx512_sin_cos()) {
      avx512_sin_cos<false>(angles, n, sin_out, cos_out);
      return;
    }
    for (int64_t i = 0; i < n; ++i) PolynomialSinCos()(angles[i], &sin_out[i], &cos_out[i]);
  }
};

}  // namespace pe_ext::cpu
