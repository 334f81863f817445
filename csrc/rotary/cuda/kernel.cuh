// The CUDA kernel's work, as plain functions of the launch grid. The __global__ kernel in rotary.cu is a thin wrapper
// around rotary_thread, and the test-only grid emulator (rotary/testing.cpp) runs the very same function over the
// same grid on the CPU, so CI exercises the grid mapping, vector widths, alignment fallbacks and tails without a GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "common/grid_emulator.h"
#include "common/host_device.h"
#include "common/vector_access.h"
#include "rotary/math.h"

namespace pe_ext::rotary::cuda {

// Frequencies travel inside the launch's arguments (no device copy, nothing to replay in a CUDA graph) when there
// are at most this many; more (rotary_dim > 512) are read from a device tensor.
constexpr int kMaxInlineFreqs = 256;

// One of q and k: its rows and where they are written, all pointers at element (0, 0, 0, 0).
template <typename scalar_t>
struct RotaryOperand {
  const scalar_t* x;  // [batch, seq, heads, head_dim]
  scalar_t* out;      // [batch, seq, heads, head_dim]; x itself in place
  int64_t x_stride_b, x_stride_l, x_stride_h, x_stride_d;
  int64_t out_stride_b, out_stride_l, out_stride_h, out_stride_d;
  int64_t heads;  // 0: no such operand (k absent)
};

// One launch's data: every head of token (b, l) of q and k rotated by the angles of position(b, l) (math.h).
template <typename scalar_t, typename table_t>
struct RotaryArgs {
  using acc_t = at::opmath_type<scalar_t>;
  RotaryOperand<scalar_t> operands[2];  // q, k
  int64_t batch, seq_len, head_dim, rotary_dim, num_pairs;
  Positions positions;
  const acc_t* freqs;                   // [num_pairs] on the device, or nullptr: inline_freqs
  acc_t inline_freqs[kMaxInlineFreqs];  // [num_pairs] when they fit
  const table_t *cos, *sin;             // [batch, rows, rotary_dim] (batch stride 0 when shared), or nullptr
  int64_t cos_stride_b, cos_stride_r, cos_stride_d;
  int64_t sin_stride_b, sin_stride_r, sin_stride_d;
  acc_t cos_scaling, sin_scaling;  // attention_scaling, and its negation for the transposed map (math.h)
  bool precise_angle, transpose, in_place;

  PE_HOST_DEVICE acc_t frequency(int64_t i) const { return freqs != nullptr ? freqs[i] : inline_freqs[i]; }
  PE_HOST_DEVICE int64_t total_heads() const { return operands[0].heads + operands[1].heads; }
};

// How the grid covers (tokens, work units of a row, heads). A unit is a chunk of P pairs (16 bytes of a neox half,
// or of interleaved gptj pairs), or, out of place with rotary_dim < head_dim, a chunk of pass-through columns. A
// thread owns a unit, loads its frequencies once, and walks tokens with a grid-stride loop; for each token it
// computes its pairs' cos and sin once and rotates them in every head of its block's head group, so the sin/cos cost
// is divided by the heads per group.
struct LaunchConfig {
  int vec;                  // elements per 16-byte access when > 1; element by element when 1
  int pairs_per_unit;       // P: vec (neox), vec / 2 (gptj), 1 element-wise
  int64_t pair_units;       // ceil(num_pairs / P)
  int64_t copy_units;       // ceil((head_dim - rotary_dim) / vec) out of place, else 0
  int64_t heads_per_block;  // heads of q then k each block_y covers
  // threads_x threads cover the units (striding when there are more), threads_y tokens share a block; blocks_x token
  // groups, blocks_y head groups.
  LaunchGrid grid;
};

constexpr int kThreadsPerBlock = 256;
constexpr int kBlocksPerSm = 8;  // 8 x 256 threads fill an SM (2048 threads)
constexpr int64_t kMaxGridY = 65535;

PE_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
PE_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline LaunchConfig make_launch_config(int64_t tokens, int64_t total_heads, int64_t num_pairs, int64_t passthrough,
                                       Style style, int vec, int num_sms) {
  LaunchConfig c;
  c.vec = vec;
  c.pairs_per_unit = vec == 1 ? 1 : (style == Style::kNeox ? vec : vec / 2);
  c.pair_units = ceil_div(num_pairs, c.pairs_per_unit);
  c.copy_units = ceil_div(passthrough, vec);
  const int64_t units = c.pair_units + c.copy_units;
  LaunchGrid& g = c.grid;
  g.threads_x = static_cast<int>(min64(units, kThreadsPerBlock));
  g.threads_y = kThreadsPerBlock / g.threads_x;
  const int64_t target_blocks = static_cast<int64_t>(num_sms) * kBlocksPerSm;
  g.blocks_x = min64(ceil_div(tokens, g.threads_y), target_blocks);
  // Few tokens (decoding): split the heads across blocks too, so that the GPU fills.
  const int64_t head_groups = min64(min64(total_heads, ceil_div(target_blocks, g.blocks_x)), kMaxGridY);
  c.heads_per_block = ceil_div(total_heads, head_groups);
  g.blocks_y = ceil_div(total_heads, c.heads_per_block);
  return c;
}

// The pairs [i0, i0 + P) of a row (n pairs) as their first and second elements. kVec: 16-byte spans (the host
// checked alignment and unit column strides): neox, the two halves' chunks; gptj, one chunk of interleaved pairs.
// Otherwise element by element, columns `stride` apart.
template <int P, bool kVec, Style kStyle, typename T>
PE_HOST_DEVICE void load_pairs(const T* row, int64_t stride, int64_t i0, int64_t n, T (&first)[P], T (&second)[P]) {
  if constexpr (kVec && kStyle == Style::kNeox) {
    load_span<P>(row + i0, first);
    load_span<P>(row + n + i0, second);
  } else if constexpr (kVec) {
    T both[2 * P];
    load_span<2 * P>(row + 2 * i0, both);
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      first[m] = both[2 * m];
      second[m] = both[2 * m + 1];
    }
  } else {
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      first[m] = row[pair_first(kStyle, i0 + m) * stride];
      second[m] = row[pair_second(kStyle, i0 + m, n) * stride];
    }
  }
}

template <int P, bool kVec, Style kStyle, typename T>
PE_HOST_DEVICE void store_pairs(T* row, int64_t stride, int64_t i0, int64_t n, const T (&first)[P],
                                const T (&second)[P]) {
  if constexpr (kVec && kStyle == Style::kNeox) {
    store_span<P>(row + i0, first);
    store_span<P>(row + n + i0, second);
  } else if constexpr (kVec) {
    T both[2 * P];
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      both[2 * m] = first[m];
      both[2 * m + 1] = second[m];
    }
    store_span<2 * P>(row + 2 * i0, both);
  } else {
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      row[pair_first(kStyle, i0 + m) * stride] = first[m];
      row[pair_second(kStyle, i0 + m, n) * stride] = second[m];
    }
  }
}

// The cos and sin of both columns of pairs [i0, i0 + P) at token (b, l): read from the tables (kTables) or computed
// from the unit's frequencies; sin swapped and negated for the transposed map.
template <int P, bool kVec, bool kTables, Style kStyle, typename scalar_t, typename table_t>
PE_HOST_DEVICE void pair_coefficients(const RotaryArgs<scalar_t, table_t>& a, int64_t b, int64_t pos, int64_t i0,
                                      const at::opmath_type<scalar_t> (&freqs)[P], at::opmath_type<scalar_t> (&c1)[P],
                                      at::opmath_type<scalar_t> (&s1)[P], at::opmath_type<scalar_t> (&c2)[P],
                                      at::opmath_type<scalar_t> (&s2)[P]) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (kTables) {
    table_t cos_a[P], cos_b[P], sin_a[P], sin_b[P];
    load_pairs<P, kVec, kStyle>(a.cos + b * a.cos_stride_b + pos * a.cos_stride_r, a.cos_stride_d, i0, a.num_pairs,
                                cos_a, cos_b);
    load_pairs<P, kVec, kStyle>(a.sin + b * a.sin_stride_b + pos * a.sin_stride_r, a.sin_stride_d, i0, a.num_pairs,
                                sin_a, sin_b);
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      c1[m] = static_cast<acc_t>(cos_a[m]);
      c2[m] = static_cast<acc_t>(cos_b[m]);
      s1[m] = a.transpose ? -static_cast<acc_t>(sin_b[m]) : static_cast<acc_t>(sin_a[m]);
      s2[m] = a.transpose ? -static_cast<acc_t>(sin_a[m]) : static_cast<acc_t>(sin_b[m]);
    }
  } else {
    PE_UNROLL
    for (int m = 0; m < P; ++m) {
      scaled_cos_sin(rotary_angle<acc_t>(a.precise_angle, pos, freqs[m]), a.cos_scaling, a.sin_scaling, &c1[m], &s1[m],
                     LibrarySinCos());
      c2[m] = c1[m];
      s2[m] = s1[m];
    }
  }
}

// Pairs [i0, i0 + P) of every token this thread visits, in the heads [head_begin, head_end) of q then k.
template <int P, bool kVec, bool kTables, Style kStyle, typename scalar_t, typename table_t>
PE_HOST_DEVICE void rotate_unit(const RotaryArgs<scalar_t, table_t>& a, int64_t i0, int64_t first_token,
                                int64_t token_step, int64_t head_begin, int64_t head_end) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t freqs[P];
  PE_UNROLL
  for (int m = 0; m < P; ++m) freqs[m] = kTables ? acc_t(0) : a.frequency(i0 + m);
  for (int64_t t = first_token; t < a.batch * a.seq_len; t += token_step) {
    const int64_t b = t / a.seq_len, l = t - b * a.seq_len;
    acc_t c1[P], s1[P], c2[P], s2[P];
    pair_coefficients<P, kVec, kTables, kStyle>(a, b, a.positions(b, l), i0, freqs, c1, s1, c2, s2);
    for (int64_t h = head_begin; h < head_end; ++h) {
      const bool is_q = h < a.operands[0].heads;
      const RotaryOperand<scalar_t>& o = a.operands[is_q ? 0 : 1];
      const int64_t head = is_q ? h : h - a.operands[0].heads;
      scalar_t first[P], second[P];
      load_pairs<P, kVec, kStyle>(o.x + b * o.x_stride_b + l * o.x_stride_l + head * o.x_stride_h, o.x_stride_d, i0,
                                  a.num_pairs, first, second);
      PE_UNROLL
      for (int m = 0; m < P; ++m) {
        const acc_t x1 = static_cast<acc_t>(first[m]), x2 = static_cast<acc_t>(second[m]);
        first[m] = static_cast<scalar_t>(rotated_first(x1, x2, c1[m], s1[m]));
        second[m] = static_cast<scalar_t>(rotated_second(x1, x2, c2[m], s2[m]));
      }
      store_pairs<P, kVec, kStyle>(o.out + b * o.out_stride_b + l * o.out_stride_l + head * o.out_stride_h,
                                   o.out_stride_d, i0, a.num_pairs, first, second);
    }
  }
}

// Pass-through columns [col0, col0 + W) of every token this thread visits (out of place only).
template <int W, typename scalar_t, typename table_t>
PE_HOST_DEVICE void copy_unit(const RotaryArgs<scalar_t, table_t>& a, int64_t col0, int64_t first_token,
                              int64_t token_step, int64_t head_begin, int64_t head_end) {
  for (int64_t t = first_token; t < a.batch * a.seq_len; t += token_step) {
    const int64_t b = t / a.seq_len, l = t - b * a.seq_len;
    for (int64_t h = head_begin; h < head_end; ++h) {
      const bool is_q = h < a.operands[0].heads;
      const RotaryOperand<scalar_t>& o = a.operands[is_q ? 0 : 1];
      const int64_t head = is_q ? h : h - a.operands[0].heads;
      const scalar_t* src = o.x + b * o.x_stride_b + l * o.x_stride_l + head * o.x_stride_h + col0 * o.x_stride_d;
      scalar_t* dst = o.out + b * o.out_stride_b + l * o.out_stride_l + head * o.out_stride_h + col0 * o.out_stride_d;
      if constexpr (W > 1) {
        scalar_t values[W];
        load_span<W>(src, values);
        store_span<W>(dst, values);
      } else {
        *dst = *src;
      }
    }
  }
}

// Everything thread (thread_x, thread_y) of block (block_x, block_y) does. VEC is the config's vec.
template <int VEC, bool kTables, Style kStyle, typename scalar_t, typename table_t>
PE_HOST_DEVICE void rotary_thread(const RotaryArgs<scalar_t, table_t>& a, const LaunchConfig& cfg, int64_t block_x,
                                  int64_t block_y, int thread_x, int thread_y) {
  constexpr bool kVec = VEC > 1;
  constexpr int P = kVec ? (kStyle == Style::kNeox ? VEC : VEC / 2) : 1;
  const int64_t head_begin = block_y * cfg.heads_per_block;
  const int64_t head_end = min64(a.total_heads(), head_begin + cfg.heads_per_block);
  const int64_t first_token = block_x * cfg.grid.threads_y + thread_y;
  const int64_t token_step = cfg.grid.blocks_x * cfg.grid.threads_y;
  for (int64_t unit = thread_x; unit < cfg.pair_units + cfg.copy_units; unit += cfg.grid.threads_x) {
    if (unit < cfg.pair_units) {  // whole units: a vectorized launch has num_pairs a multiple of P (launch.h)
      rotate_unit<P, kVec, kTables, kStyle>(a, unit * P, first_token, token_step, head_begin, head_end);
    } else {
      const int64_t col0 = a.rotary_dim + (unit - cfg.pair_units) * VEC;
      if (col0 + VEC <= a.head_dim) {
        copy_unit<VEC>(a, col0, first_token, token_step, head_begin, head_end);
      } else {
        for (int64_t col = col0; col < a.head_dim; ++col)
          copy_unit<1>(a, col, first_token, token_step, head_begin, head_end);
      }
    }
  }
}

}  // namespace pe_ext::rotary::cuda
