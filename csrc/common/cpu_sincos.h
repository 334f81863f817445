// A vectorizable float sin/cos for the CPU kernels' row loops.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pe_ext::cpu {

// sin and cos of a float angle as glibc's sinf/cosf give them (within an ulp), but branch-free, so that a row of
// them vectorizes: the angle is reduced modulo pi/2 in double (pi/2 in two parts, with FMAs: exact to ~1e-16 while
// |angle| < 2^50, kPolynomialAngleLimit), then sin and cos of the remainder (|r| <= pi/4) are Taylor polynomials in
// double (truncation error < 1e-11) rounded once to float. The quotient is rounded by adding 1.5 * 2^52, whose ulp
// is 1, rather than with rint (which the compiler does not vectorize while FP exceptions are honoured); the sum's
// low bits are the quotient mod 4, the quadrant.
struct PolynomialSinCos {
  C10_ALWAYS_INLINE void operator()(float angle, float* s, float* c) const {  // inlined, or no loop vectorizes
    constexpr double kTwoOverPi = 0.63661977236758134;
    constexpr double kHalfPi = 1.5707963267948966;         // pi/2 rounded to double
    constexpr double kHalfPiTail = 6.123233995736766e-17;  // pi/2 - kHalfPi
    constexpr double kRoundingShift = 0x1.8p52;
    const double a = angle;
    const double shifted = a * kTwoOverPi + kRoundingShift;
    const double k = shifted - kRoundingShift;  // the nearest integer to a / (pi/2)
    uint64_t shifted_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
    const uint64_t quadrant = shifted_bits & 3;
    const double r = std::fma(-k, kHalfPiTail, std::fma(-k, kHalfPi, a));
    const double r2 = r * r;
    const double sin_r =
        r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (-1.0 / 39916800)))));
    // The last term multiplies by 1/12! rather than dividing by 12! (a vector division per angle): every float
    // angle from 0 to 2^54 gives the same float sin and cos either way.
    const double cos_r =
        1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 +
                                                                     r2 * (-1.0 / 3628800 + r2 * (1.0 / 479001600))))));
    const double sin_a = quadrant & 1 ? cos_r : sin_r, cos_a = quadrant & 1 ? sin_r : cos_r;
    // Signs as factors: a selected negation is not if-converted, and the loop would not vectorize.
    const double sin_sign = quadrant & 2 ? -1.0 : 1.0, cos_sign = (quadrant + 1) & 2 ? -1.0 : 1.0;
    *s = static_cast<float>(sin_a * sin_sign);
    *c = static_cast<float>(cos_a * cos_sign);
  }
};
constexpr double kPolynomialAngleLimit = 0x1p50;

}  // namespace pe_ext::cpu
