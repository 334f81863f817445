// Angles and their sin and cos, for every family's math (host and device alike).
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace pe_ext {

// Accurate sin and cos (no fast-math intrinsics: angles reach 1e5 and beyond, where __sinf is useless).
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

// sin_cos as a function object, for the math that takes a vectorizable equivalent on the CPU.
struct LibrarySinCos {
  template <typename acc_t>
  PE_HOST_DEVICE void operator()(acc_t angle, acc_t* s, acc_t* c) const {
    sin_cos(angle, s, c);
  }
};

// angle minus the nearest multiple of 2*pi, in double. 2*pi is split in two parts, so that the product turns * 2pi
// is exact to ~1e-16 relative: rounded to float afterwards, the result stays within 1e-6 of the true reduced angle far
// beyond 16M positions, where the float32 product position * freq loses ~1e-2 by position 300k.
PE_HOST_DEVICE double reduce_angle(double angle) {
  constexpr double kTwoPi = 6.283185307179586;           // 2*pi rounded to double
  constexpr double kTwoPiTail = 2.4492935982947064e-16;  // 2*pi - kTwoPi
  constexpr double kInvTwoPi = 0.15915494309189535;
  const double turns = ::rint(angle * kInvTwoPi);
  return ::fma(-turns, kTwoPiTail, ::fma(-turns, kTwoPi, angle));
}

}  // namespace pe_ext
