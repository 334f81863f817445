// The sinusoidal positional encoding, written once. Every kernel (CPU, CUDA and the CUDA grid emulator) computes
// its values with these functions, so the CPU tests exercise the very formulas the GPU runs.
//
//   freq(i) = freq_scale * exp(i * freq_step), i < num_freqs
//     paper ("Attention Is All You Need"):  freq_step = -2 log(base) / d_model,                   freq_scale = 1
//     timescales (tensor2tensor, fairseq):  freq_step = -log(max_ts / min_ts) / max(d_model/2 - 1, 1),
//                                           freq_scale = 1 / min_ts
//   interleaved layout:   pe(pos, 2i) = sin(pos * freq(i)),  pe(pos, 2i + 1) = cos(pos * freq(i))
//   concatenated layout:  pe(pos, i)  = sin(pos * freq(i)),  pe(pos, n + i)  = cos(pos * freq(i)),  n = d_model / 2,
//                         and an odd d_model's last column is 0 (as fairseq and tensor2tensor pad it)
//
// Frequencies are computed in double and rounded once. float32 data (and float16/bfloat16, which compute in float32)
// get the classic float32 angle pos * freq and float32 sin/cos, so on-the-fly values match the classic table to
// float32 rounding; with precise_angle the angle is formed and reduced modulo 2*pi in double first. float64 data get
// float64 throughout.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/angle.h"
#include "common/host_device.h"

namespace pe_ext::sinusoidal {

enum class Layout : int32_t { kInterleaved = 0, kConcatenated = 1 };

// Everything that defines the encoding's values, filled once by the host code.
struct EncodingSpec {
  int64_t d_model = 0;
  int64_t num_freqs = 0;  // interleaved: ceil(d_model / 2); concatenated: d_model / 2
  double freq_step = 0.0;
  double freq_scale = 1.0;
  Layout layout = Layout::kInterleaved;
  bool precise_angle = false;
};

inline EncodingSpec paper_spec(int64_t d_model, double base, Layout layout, bool precise_angle) {
  EncodingSpec s;
  s.d_model = d_model;
  s.layout = layout;
  s.num_freqs = layout == Layout::kInterleaved ? (d_model + 1) / 2 : d_model / 2;
  // -(log(base) / d_model) is the factor the classic module computes in double; 2i times it is i times twice it.
  s.freq_step = d_model > 0 ? 2.0 * -(std::log(base) / static_cast<double>(d_model)) : 0.0;
  s.precise_angle = precise_angle;
  return s;
}

inline EncodingSpec timescale_spec(int64_t d_model, double min_timescale, double max_timescale, Layout layout,
                                   bool precise_angle) {
  EncodingSpec s = paper_spec(d_model, 1.0, layout, precise_angle);
  // d_model / 2 - 1 would divide by zero for d_model < 4; tensor2tensor's max(., 1) defines that corner.
  const double steps = static_cast<double>(d_model / 2 - 1 > 1 ? d_model / 2 - 1 : 1);
  s.freq_step = -std::log(max_timescale / min_timescale) / steps;
  s.freq_scale = 1.0 / min_timescale;
  return s;
}

PE_HOST_DEVICE double frequency(const EncodingSpec& s, int64_t i) {
  return s.freq_scale * ::exp(static_cast<double>(i) * s.freq_step);
}

// The angle whose sin and cos pe(pos) takes at frequency freq, in acc_t. The default is rounded in acc_t as the
// classic float32 product `position * div_term` is, which loses ~1e-2 by position 300k. precise_angle forms the
// product in double and reduces it (common/angle.h) before rounding to acc_t, keeping the error under 1e-6 far beyond
// 16M positions.
template <typename acc_t>
PE_HOST_DEVICE acc_t pe_angle(bool precise_angle, int64_t pos, double freq) {
  if constexpr (sizeof(acc_t) < sizeof(double)) {  // float64 math needs no help
    if (precise_angle) {
      return static_cast<acc_t>(reduce_angle(static_cast<double>(pos) * freq));
    }
  }
  return static_cast<acc_t>(pos) * static_cast<acc_t>(freq);
}

template <typename acc_t>
PE_HOST_DEVICE void pe_sin_cos(const EncodingSpec& s, int64_t pos, double freq, acc_t* sin_out, acc_t* cos_out) {
  sin_cos(pe_angle<acc_t>(s.precise_angle, pos, freq), sin_out, cos_out);
}

// Which frequency column `col` uses, and whether it is its sin, its cos, or (an odd concatenated row's tail) zero.
enum class Wave : int32_t { kSin, kCos, kZero };

PE_HOST_DEVICE Wave column_wave(const EncodingSpec& s, int64_t col, int64_t* freq_index) {
  if (s.layout == Layout::kInterleaved) {
    *freq_index = col / 2;
    return col % 2 == 0 ? Wave::kSin : Wave::kCos;
  }
  *freq_index = col < s.num_freqs ? col : col - s.num_freqs;
  if (col >= 2 * s.num_freqs) return Wave::kZero;
  return col < s.num_freqs ? Wave::kSin : Wave::kCos;
}

// pe(pos, :) for a whole row, with freqs[i] = frequency(s, i). sin_cos_of(angle, &sin, &cos) evaluates one pair:
// sin_cos, or a CPU kernel's vectorizable equivalent (the loops have no conditional stores, so that they vectorize).
struct LibrarySinCos {
  template <typename acc_t>
  PE_HOST_DEVICE void operator()(acc_t angle, acc_t* s, acc_t* c) const {
    sin_cos(angle, s, c);
  }
};

// The loops of pe_row for one value of precise_angle, a constant in them, so that they have no branch (and vectorize).
template <typename acc_t, bool kPreciseAngle, typename SinCos>
PE_HOST_DEVICE void pe_row_loops(const EncodingSpec& s, int64_t pos, const double* freqs, acc_t* values,
                                 SinCos sin_cos_of) {
  const int64_t n = s.num_freqs;
  if (s.layout == Layout::kInterleaved) {
    const int64_t pairs = s.d_model / 2;  // an odd row's last frequency has a sin column only
    for (int64_t i = 0; i < pairs; ++i) {
      sin_cos_of(pe_angle<acc_t>(kPreciseAngle, pos, freqs[i]), &values[2 * i], &values[2 * i + 1]);
    }
    if (pairs < n) {
      acc_t unused;
      sin_cos_of(pe_angle<acc_t>(kPreciseAngle, pos, freqs[pairs]), &values[2 * pairs], &unused);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      sin_cos_of(pe_angle<acc_t>(kPreciseAngle, pos, freqs[i]), &values[i], &values[n + i]);
    }
    if (s.d_model % 2 == 1) values[s.d_model - 1] = acc_t(0);  // an odd concatenated row's padding
  }
}

template <typename acc_t, typename SinCos = LibrarySinCos>
PE_HOST_DEVICE void pe_row(const EncodingSpec& s, int64_t pos, const double* freqs, acc_t* values,
                           SinCos sin_cos_of = SinCos()) {
  if (s.precise_angle) {
    pe_row_loops<acc_t, true>(s, pos, freqs, values, sin_cos_of);
  } else {
    pe_row_loops<acc_t, false>(s, pos, freqs, values, sin_cos_of);
  }
}

}  // namespace pe_ext::sinusoidal
