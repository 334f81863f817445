// Rotary position embedding, written once. Every kernel (CPU, CUDA and the CUDA grid emulator) computes with these
// functions, so the CPU tests exercise the very formulas the GPU runs.
//
// A head's first rotary_dim columns form n = rotary_dim / 2 pairs (a, b) that rotate by the angle of their frequency:
//   style neox (GPT-NeoX, HF Llama's rotate_half):  pair i = columns (i, i + n)
//   style gptj (GPT-J, torchtune, interleaved):     pair i = columns (2i, 2i + 1)
//   x'_a = x_a * cos_a - x_b * sin_a,   x'_b = x_b * cos_b + x_a * sin_b
// which is Hugging Face's x * cos + rotate_half(x) * sin at those columns (cos_a = cos_b, sin_a = sin_b when the
// values are computed here: cos and sin of angle = position * inv_freq(i), times attention_scaling). Columns from
// rotary_dim on pass through. The transposed map (backward) is the same with (sin_a, sin_b) -> (-sin_b, -sin_a).
//
// Rounding follows Hugging Face's float32 code: the angle is the float32 product position * inv_freq (or, with
// precise_angle, formed and reduced in double, then rounded), each product and the sum are rounded once (never fused
// into an FMA: PyTorch runs them as separate ops), so that with HF's cos and sin the results are bitwise HF's in
// float32. float16/bfloat16 data compute in float32 and round once at the end; float64 data compute in float64.
#pragma once

#include <cstdint>

#include "common/angle.h"
#include "common/host_device.h"

namespace pe_ext::rotary {

enum class Style : int32_t { kNeox = 0, kGptj = 1 };

// The columns of pair i of a head: (a, b).
PE_HOST_DEVICE int64_t pair_first(Style style, int64_t i) { return style == Style::kNeox ? i : 2 * i; }
PE_HOST_DEVICE int64_t pair_second(Style style, int64_t i, int64_t num_pairs) {
  return style == Style::kNeox ? i + num_pairs : 2 * i + 1;
}

// Products and sums rounded once each. The host compiler is kept from fusing them by the translation units that
// include this header (common/no_fp_contract.h); nvcc fuses unless told, hence the _rn intrinsics.
PE_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PE_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
PE_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PE_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// x'_a and x'_b of a pair (a, b) with the cos and sin of each column.
template <typename acc_t>
PE_HOST_DEVICE acc_t rotated_first(acc_t a, acc_t b, acc_t cos_a, acc_t sin_a) {
  return add_rn(mul_rn(a, cos_a), -mul_rn(b, sin_a));
}
template <typename acc_t>
PE_HOST_DEVICE acc_t rotated_second(acc_t a, acc_t b, acc_t cos_b, acc_t sin_b) {
  return add_rn(mul_rn(b, cos_b), mul_rn(a, sin_b));
}

// The angle of a pair whose frequency is freq at integer position pos, in acc_t: the product rounded in acc_t, as
// Hugging Face's `position_ids.float() * inv_freq`, or with precise_angle (float math only) the product formed and
// reduced modulo 2*pi in double before rounding.
template <typename acc_t>
PE_HOST_DEVICE acc_t rotary_angle(bool precise_angle, int64_t pos, acc_t freq) {
  if constexpr (sizeof(acc_t) < sizeof(double)) {  // float64 math needs no help
    if (precise_angle) return static_cast<acc_t>(reduce_angle(static_cast<double>(pos) * static_cast<double>(freq)));
  }
  return mul_rn(static_cast<acc_t>(pos), freq);
}

// cos and sin of a pair's angle times attention_scaling (HF: `emb.cos() * attention_scaling`, rounded in acc_t).
// sin_scaling is -attention_scaling for the transposed map: rounding is symmetric, so that is the negated sin.
template <typename acc_t, typename SinCos>
PE_HOST_DEVICE void scaled_cos_sin(acc_t angle, acc_t cos_scaling, acc_t sin_scaling, acc_t* c, acc_t* s,
                                   SinCos sin_cos_of) {
  acc_t sn, cs;
  sin_cos_of(angle, &sn, &cs);
  *c = mul_rn(cs, cos_scaling);
  *s = mul_rn(sn, sin_scaling);
}

// The position of token l of sequence b: offset + (positions[b, l] if given; with cu_seqlens, l minus the start of
// the packed sequence holding token l; else l). Wraps modulo 2^64 rather than overflowing.
struct Positions {
  const int64_t* ids;         // [batch, seq] (batch stride 0 when shared), or nullptr
  const int64_t* cu_seqlens;  // [num_seqs + 1], or nullptr
  int64_t ids_stride_b, ids_stride_l;
  int64_t num_seqs;
  int64_t offset;

  PE_HOST_DEVICE int64_t operator()(int64_t b, int64_t l) const {
    int64_t relative = l;
    if (ids != nullptr) {
      relative = ids[b * ids_stride_b + l * ids_stride_l];
    } else if (cu_seqlens != nullptr) {
      relative = l - cu_seqlens[sequence_of(l)];
    }
    return static_cast<int64_t>(static_cast<uint64_t>(offset) + static_cast<uint64_t>(relative));
  }

  // The last sequence starting at or before token l (binary search; always a valid index, even for cu_seqlens the
  // host could not check, e.g. during CUDA graph capture).
  PE_HOST_DEVICE int64_t sequence_of(int64_t l) const {
    int64_t low = 0, high = num_seqs - 1;
    while (low < high) {
      const int64_t mid = (low + high + 1) / 2;
      if (cu_seqlens[mid] <= l) {
        low = mid;
      } else {
        high = mid - 1;
      }
    }
    return low;
  }
};

}  // namespace pe_ext::rotary
