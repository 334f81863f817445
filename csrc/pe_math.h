// The sinusoidal positional encoding, written once. Every kernel (CPU, CUDA and the CUDA grid emulator) computes
// its values with these functions, so the CPU tests exercise the very formulas the GPU runs.
//
//   pe(pos, 2i)   = sin(pos * freq(i))
//   pe(pos, 2i+1) = cos(pos * freq(i)),   freq(i) = exp(2i * -(log(base) / d_model))
//
// float32 data (and float16/bfloat16, which compute in float32) get the classic float32 angle pos * freq and float32
// sin/cos, so on-the-fly values match the classic table to float32 rounding; float64 data get float64 throughout.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PE_HOST_DEVICE inline
#endif

namespace pe_ext {

// The exponent factor -(log(base) / d_model). The classic module computes it in double (Python floats).
inline double frequency_exponent(double base, int64_t d_model) {
  return -(std::log(base) / static_cast<double>(d_model));
}

// freq(pair), correctly rounded to acc_t: computed in double and rounded once, identical on CPU and GPU. The classic
// module rounds 2i * exponent to float32 before its float32 exp, which puts up to ~1e-6 relative error into some
// frequencies; these are at least as accurate, and differ from the classic table by less than its own float32 error.
template <typename acc_t>
PE_HOST_DEVICE acc_t pair_frequency(int64_t pair, double exponent) {
  return static_cast<acc_t>(::exp(static_cast<double>(2 * pair) * exponent));
}

// The angle pos * freq, rounded in acc_t as the classic float32 product `position * div_term` is.
template <typename acc_t>
PE_HOST_DEVICE acc_t pe_angle(int64_t pos, acc_t freq) {
  return static_cast<acc_t>(pos) * freq;
}

// Accurate sin and cos (no fast-math intrinsics: the angle reaches 1e5 and beyond, where __sinf is useless).
PE_HOST_DEVICE void sin_cos(float angle, float* s, float* c) {
#if defined(__CUDA_ARCH__)
  ::sincosf(angle, s, c);
#else
  *s = std::sin(angle);
  *c = std::cos(angle);
#endif
}

PE_HOST_DEVICE void sin_cos(double angle, double* s, double* c) {
#if defined(__CUDA_ARCH__)
  ::sincos(angle, s, c);
#else
  *s = std::sin(angle);
  *c = std::cos(angle);
#endif
}

// pe(pos, :) for a whole row of d_model columns, with freqs[i] = pair_frequency(i): one sin_cos per pair.
template <typename acc_t>
PE_HOST_DEVICE void pe_row(int64_t pos, int64_t d_model, const acc_t* freqs, acc_t* values) {
  for (int64_t i = 0; 2 * i < d_model; ++i) {
    acc_t s, c;
    sin_cos(pe_angle<acc_t>(pos, freqs[i]), &s, &c);
    values[2 * i] = s;
    if (2 * i + 1 < d_model) values[2 * i + 1] = c;
  }
}

}  // namespace pe_ext
