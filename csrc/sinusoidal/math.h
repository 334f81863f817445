// The sinusoidal positional encoding, written once. Every kernel (CPU, CUDA and the CUDA grid emulator) computes
// its values with these functions, so the CPU tests exercise the very formulas the GPU runs.
//
//   interleaved layout:              pe(pos, 2i) = sin(pos * freq[i]),  pe(pos, 2i + 1) = cos(pos * freq[i])
//   concatenated layout:             pe(pos, i)  = sin(pos * freq[i]),  pe(pos, n + i)  = cos(pos * freq[i])
//   concatenated_cos_first layout:   pe(pos, i)  = cos(pos * freq[i]),  pe(pos, n + i)  = sin(pos * freq[i])
// with n = d_model / 2 in the concatenated layouts, whose odd d_model ends with a zero column (as fairseq,
// tensor2tensor and diffusers pad it).
//
// The frequencies freq[i] are not computed here: the host evaluates them once per encoding (sinusoidal/frequencies.h)
// and the kernels read them from a small table, holding each value exactly as the angle uses it. float32 data (and
// float16/bfloat16, which compute in float32) get the classic float32 angle float(pos) * float(freq) and float32
// sin/cos; with precise_angle the angle is formed and reduced modulo 2*pi in double first. float64 data get float64
// throughout. A position is an int64 (offset + an index or id) or, for fractional positions, a double.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/angle.h"
#include "common/host_device.h"

namespace pe_ext::sinusoidal {

enum class Layout : int32_t { kInterleaved = 0, kConcatenated = 1, kConcatenatedCosFirst = 2 };

// The shape of the encoding, filled once by the host code; the values of the frequencies travel beside it.
struct EncodingSpec {
  int64_t d_model = 0;
  int64_t num_freqs = 0;  // interleaved: ceil(d_model / 2); concatenated: d_model / 2
  Layout layout = Layout::kInterleaved;
  bool precise_angle = false;
};

inline int64_t num_frequencies(int64_t d_model, Layout layout) {
  return layout == Layout::kInterleaved ? (d_model + 1) / 2 : d_model / 2;
}

// The angle whose sin and cos pe(pos) takes at frequency freq, in acc_t. The default is rounded in acc_t as the
// classic float32 product `position * div_term` is, which loses ~1e-2 by position 300k; freq holds a value of acc_t
// (a float32 angle's frequencies are float32 values, whether stored as float or double). kPreciseAngle forms the
// product in double and reduces it (common/angle.h) before rounding to acc_t, keeping the error under 1e-6 far beyond
// 16M positions; its freq must be a double. pos_t is int64_t or double (fractional positions).
template <typename acc_t, bool kPreciseAngle, typename pos_t, typename freq_t>
PE_HOST_DEVICE acc_t pe_angle(pos_t pos, freq_t freq) {
  if constexpr (kPreciseAngle && sizeof(acc_t) < sizeof(double)) {  // float64 math needs no help
    static_assert(sizeof(freq_t) == sizeof(double), "precise_angle needs float64 frequencies");
    return static_cast<acc_t>(reduce_angle(static_cast<double>(pos) * freq));
  } else {
    return static_cast<acc_t>(pos) * static_cast<acc_t>(freq);
  }
}

// Which frequency column `col` uses, and whether it is its sin, its cos, or (an odd concatenated row's tail) zero.
enum class Wave : int32_t { kSin, kCos, kZero };

PE_HOST_DEVICE Wave column_wave(const EncodingSpec& s, int64_t col, int64_t* freq_index) {
  if (s.layout == Layout::kInterleaved) {
    *freq_index = col / 2;
    return col % 2 == 0 ? Wave::kSin : Wave::kCos;
  }
  const bool first_block = col < s.num_freqs;
  *freq_index = first_block ? col : col - s.num_freqs;
  if (col >= 2 * s.num_freqs) return Wave::kZero;
  return first_block == (s.layout == Layout::kConcatenated) ? Wave::kSin : Wave::kCos;
}

// The angles of frequencies freqs[0, n) at pos.
template <typename acc_t, typename pos_t>
inline void pe_angles(const EncodingSpec& s, pos_t pos, const double* freqs, int64_t n, acc_t* angles) {
  if (s.precise_angle) {  // a constant in each loop, so that both vectorize
    for (int64_t i = 0; i < n; ++i) angles[i] = pe_angle<acc_t, true>(pos, freqs[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) angles[i] = pe_angle<acc_t, false>(pos, freqs[i]);
  }
}

// sin and cos of a run of angles, one at a time with sin_cos_of(angle, &sin, &cos): sin_cos, or a CPU kernel's
// vectorizable equivalent (the loops have no conditional stores, so that they vectorize).
template <typename SinCos>
struct ElementwiseSinCos {
  SinCos sin_cos_of;
  // out[2i] = sin(angles[i]), out[2i + 1] = cos(angles[i])
  template <typename acc_t>
  C10_ALWAYS_INLINE void interleaved(const acc_t* angles, int64_t n, acc_t* out) const {
    for (int64_t i = 0; i < n; ++i) sin_cos_of(angles[i], &out[2 * i], &out[2 * i + 1]);
  }
  template <typename acc_t>
  C10_ALWAYS_INLINE void split(const acc_t* angles, int64_t n, acc_t* sin_out, acc_t* cos_out) const {
    for (int64_t i = 0; i < n; ++i) sin_cos_of(angles[i], &sin_out[i], &cos_out[i]);
  }
};

// pe(pos, :) for a whole row (the CPU's: each CUDA thread computes its own columns), with freqs the encoding's
// frequency table. The angles are formed a chunk at a time, then `runs` (ElementwiseSinCos, or a CPU kernel's
// vectorized equivalent) puts their sin and cos where the layout wants them.
template <typename acc_t, typename pos_t, typename SinCosRuns = ElementwiseSinCos<LibrarySinCos>>
C10_ALWAYS_INLINE void pe_row(const EncodingSpec& s, pos_t pos, const double* freqs, acc_t* values,
                              SinCosRuns runs = SinCosRuns()) {
  constexpr int64_t kAnglesPerChunk = 256;
  acc_t angles[kAnglesPerChunk];
  const int64_t n = s.num_freqs;
  const bool interleaved = s.layout == Layout::kInterleaved, cos_first = s.layout == Layout::kConcatenatedCosFirst;
  acc_t* sin_values = cos_first ? values + n : values;
  acc_t* cos_values = cos_first ? values : values + n;
  for (int64_t first = 0; first < n; first += kAnglesPerChunk) {
    const int64_t count = std::min(kAnglesPerChunk, n - first);
    pe_angles(s, pos, freqs + first, count, angles);
    if (!interleaved) {
      runs.split(angles, count, sin_values + first, cos_values + first);
    } else if (2 * (first + count) <= s.d_model) {
      runs.interleaved(angles, count, values + 2 * first);
    } else {  // an odd row's last frequency has a sin column only
      acc_t unused_cos;
      runs.interleaved(angles, count - 1, values + 2 * first);
      runs.split(angles + count - 1, 1, values + s.d_model - 1, &unused_cos);
    }
  }
  if (!interleaved && s.d_model % 2 == 1) values[s.d_model - 1] = acc_t(0);  // an odd concatenated row's padding
}

}  // namespace pe_ext::sinusoidal
