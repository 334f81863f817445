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
// classic float32 product `position * div_term` is, which loses ~1e-2 by position 300k. precise_angle forms the
// product in double and reduces it (common/angle.h) before rounding to acc_t, keeping the error under 1e-6 far beyond
// 16M positions. pos_t is int64_t or double (fractional positions).
template <typename acc_t, typename pos_t>
PE_HOST_DEVICE acc_t pe_angle(bool precise_angle, pos_t pos, double freq) {
  if constexpr (sizeof(acc_t) < sizeof(double)) {  // float64 math needs no help
    if (precise_angle) {
      return static_cast<acc_t>(reduce_angle(static_cast<double>(pos) * freq));
    }
  }
  return static_cast<acc_t>(pos) * static_cast<acc_t>(freq);
}

template <typename acc_t, typename pos_t>
PE_HOST_DEVICE void pe_sin_cos(const EncodingSpec& s, pos_t pos, double freq, acc_t* sin_out, acc_t* cos_out) {
  sin_cos(pe_angle<acc_t>(s.precise_angle, pos, freq), sin_out, cos_out);
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

// pe(pos, :) for a whole row, with freqs the encoding's frequency table. sin_cos_of(angle, &sin, &cos) evaluates one
// pair: sin_cos, or a CPU kernel's vectorizable equivalent (the loops have no conditional stores, so that they
// vectorize).
struct LibrarySinCos {
  template <typename acc_t>
  PE_HOST_DEVICE void operator()(acc_t angle, acc_t* s, acc_t* c) const {
    sin_cos(angle, s, c);
  }
};

// The loops of pe_row for one value of precise_angle, a constant in them, so that they have no branch (and vectorize).
template <typename acc_t, bool kPreciseAngle, typename pos_t, typename SinCos>
PE_HOST_DEVICE void pe_row_loops(const EncodingSpec& s, pos_t pos, const double* freqs, acc_t* values,
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
    const bool cos_first = s.layout == Layout::kConcatenatedCosFirst;
    acc_t* sin_values = cos_first ? values + n : values;
    acc_t* cos_values = cos_first ? values : values + n;
    for (int64_t i = 0; i < n; ++i) {
      sin_cos_of(pe_angle<acc_t>(kPreciseAngle, pos, freqs[i]), &sin_values[i], &cos_values[i]);
    }
    if (s.d_model % 2 == 1) values[s.d_model - 1] = acc_t(0);  // an odd concatenated row's padding
  }
}

template <typename acc_t, typename pos_t, typename SinCos = LibrarySinCos>
PE_HOST_DEVICE void pe_row(const EncodingSpec& s, pos_t pos, const double* freqs, acc_t* values,
                           SinCos sin_cos_of = SinCos()) {
  if (s.precise_angle) {
    pe_row_loops<acc_t, true>(s, pos, freqs, values, sin_cos_of);
  } else {
    pe_row_loops<acc_t, false>(s, pos, freqs, values, sin_cos_of);
  }
}

}  // namespace pe_ext::sinusoidal
