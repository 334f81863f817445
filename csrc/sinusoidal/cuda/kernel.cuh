// The CUDA kernel's work, as plain functions of the launch grid. The __global__ kernels in sinusoidal.cu are thin
// wrappers around add_pe_thread, and the test-only grid emulator (sinusoidal/testing.cpp) runs the very same
// function over the same grid on the CPU, so CI exercises the grid mapping, vector widths, alignment fallbacks and
// tails without a GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "common/grid_emulator.h"
#include "common/host_device.h"
#include "common/philox.h"
#include "common/vector_access.h"
#include "sinusoidal/math.h"

namespace pe_ext::sinusoidal::cuda {

PE_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// What a launch handles, each a kernel of its own: kPlain (positions offset + l; no padding, alpha or dropout: most
// calls, and kernels without that code need far fewer registers), kGeneral (positions, padding_idx, alpha or
// dropout), kFractional (kGeneral with floating-point positions, which never come with a table).
enum class Variant { kPlain, kGeneral, kFractional };

// A position: an int64, or a double for fractional positions.
template <Variant kVariant>
using position_t = std::conditional_t<kVariant == Variant::kFractional, double, int64_t>;

// One launch's data: out[b, l, :] = x[b, l, :] * scale + alpha * pe(position(b, l), :), all pointers at element
// (0, 0, 0); position(b, l) = offset + (positions[b, l] if given, else l); pe(padding_idx, :) = 0.
template <typename scalar_t, typename table_t, typename pos_t>
struct AddPeArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;       // [batch, seq_len, d_model]; nullptr when building a table (x taken as 0)
  scalar_t* out;           // [batch, seq_len, d_model]
  const table_t* table;    // [rows > every position, d_model]; nullptr when pe is computed on the fly
  const double* freqs;     // [spec.num_freqs], each exactly as the angle uses it; read when table is nullptr
  const pos_t* positions;  // [batch, seq_len], batch stride 0 when shared; nullptr: offset + l
  const acc_t* alpha;      // one value; nullptr: 1
  int64_t x_stride_b, x_stride_l, x_stride_d;
  int64_t out_stride_b, out_stride_l, out_stride_d;
  int64_t table_stride_l, table_stride_d;
  int64_t positions_stride_b, positions_stride_l;
  int64_t batch, seq_len, offset, padding_idx;
  acc_t scale;
  uint32_t dropout_threshold;  // dropout_threshold(p); 0: no dropout
  acc_t keep_scale;            // 1 / (1 - p)
  uint64_t seed;
  const int64_t* seed_on_device;  // one value, read instead of seed when not nullptr (a seed a CUDA graph redraws)
  EncodingSpec spec;              // d_model and the encoding

  PE_HOST_DEVICE pos_t position(int64_t b, int64_t l) const {
    return static_cast<pos_t>(offset) +
           (positions == nullptr ? static_cast<pos_t>(l) : positions[b * positions_stride_b + l * positions_stride_l]);
  }
  // padding_idx -1 (none) is a position like any other: only a padding_idx >= 0 zeroes its pe.
  PE_HOST_DEVICE bool is_padding(pos_t pos) const { return padding_idx >= 0 && pos == static_cast<pos_t>(padding_idx); }
  // Whether batch rows can have different positions (else one pe row serves the whole batch).
  PE_HOST_DEVICE bool positions_per_row() const { return positions != nullptr && positions_stride_b != 0; }
};

// How the grid covers (batch, seq_len, d_model). A thread owns a chunk of `vec` columns, computes its frequencies
// once, and walks positions with a grid-stride loop; for each position it computes (or loads) pe once and applies
// it to every batch row of its block, so the sin/cos cost is divided by the batch rows per block.
struct LaunchConfig {
  int vec;                  // columns per chunk: 16-byte accesses when > 1, element by element when 1
  int64_t chunks;           // ceil(d_model / vec)
  int64_t batch_per_block;  // batch rows each block applies a computed pe row to
  // threads_x threads cover the chunks (striding when chunks > threads_x), threads_y positions share a block;
  // blocks_x position groups, blocks_y batch groups.
  LaunchGrid grid;
};

constexpr int kThreadsPerBlock = 256;
constexpr int kBlocksPerSm = 8;  // 8 x 256 threads fill an SM (2048 threads)
constexpr int64_t kMaxGridY = 65535;

inline LaunchConfig make_launch_config(int64_t batch, int64_t seq_len, int64_t d_model, int vec, int num_sms) {
  LaunchConfig c;
  c.vec = vec;
  c.chunks = (d_model + vec - 1) / vec;
  LaunchGrid& g = c.grid;
  g.threads_x = static_cast<int>(min64(c.chunks, kThreadsPerBlock));
  g.threads_y = kThreadsPerBlock / g.threads_x;
  const int64_t target_blocks = static_cast<int64_t>(num_sms) * kBlocksPerSm;
  g.blocks_x = min64((seq_len + g.threads_y - 1) / g.threads_y, target_blocks);
  // Few positions: split the batch across blocks too, so small-L shapes (decoding) still fill the GPU.
  const int64_t batch_groups = min64(min64(batch, (target_blocks + g.blocks_x - 1) / g.blocks_x), kMaxGridY);
  c.batch_per_block = (batch + batch_groups - 1) / batch_groups;
  g.blocks_y = (batch + c.batch_per_block - 1) / c.batch_per_block;
  return c;
}

// pe at columns [col0, col0 + W) of position pos, from the span's frequencies. W > 1 only where the host made sure
// a span never crosses a layout boundary: interleaved spans start on an even column (whole sin/cos pairs, one
// sin_cos each), concatenated spans lie inside the sin or the cos block (one frequency per column). Fixed bounds keep
// every array of the thread in registers.
template <int W, typename acc_t, typename pos_t>
PE_HOST_DEVICE void pe_values(const EncodingSpec& s, pos_t pos, Wave wave, const double (&freqs)[W], acc_t (&pe)[W]) {
  if (W > 1 && s.layout == Layout::kInterleaved) {
    PE_UNROLL
    for (int m = 0; m < W / 2; ++m) pe_sin_cos<acc_t>(s, pos, freqs[m], &pe[2 * m], &pe[2 * m + 1]);
    return;
  }
  PE_UNROLL
  for (int k = 0; k < W; ++k) {
    acc_t sn = acc_t(0), cs = acc_t(0);
    if (wave != Wave::kZero) pe_sin_cos<acc_t>(s, pos, freqs[k], &sn, &cs);
    pe[k] = wave == Wave::kCos ? cs : sn;
  }
}

// alpha * pe at columns [col0, col0 + W) of position pos: read from the table or computed from freqs.
template <int W, Variant kVariant, typename scalar_t, typename table_t>
PE_HOST_DEVICE void span_pe(const AddPeArgs<scalar_t, table_t, position_t<kVariant>>& a, position_t<kVariant> pos,
                            int64_t col0, Wave wave, const double (&freqs)[W], at::opmath_type<scalar_t> (&pe)[W]) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kGeneralCase = kVariant != Variant::kPlain;
  if constexpr (kGeneralCase) {
    if (a.is_padding(pos) || (a.alpha != nullptr && *a.alpha == acc_t(0))) {  // alpha 0: backward's mask pass
      PE_UNROLL
      for (int k = 0; k < W; ++k) pe[k] = acc_t(0);
      return;
    }
  }
  if (kVariant == Variant::kFractional || a.table == nullptr) {  // fractional positions never come with a table
    pe_values<W>(a.spec, pos, wave, freqs, pe);
  } else if constexpr (kVariant != Variant::kFractional) {
    table_t loaded[W];
    load_span<W>(a.table + pos * a.table_stride_l + col0 * a.table_stride_d, loaded);
    PE_UNROLL
    for (int k = 0; k < W; ++k) pe[k] = static_cast<acc_t>(loaded[k]);
  }
  if (kGeneralCase && a.alpha != nullptr) {
    const acc_t alpha = *a.alpha;
    PE_UNROLL
    for (int k = 0; k < W; ++k) pe[k] *= alpha;
  }
}

// Dropout of W consecutive elements, the first with logical index `first`: one Philox call per 4 indices.
template <int W, typename scalar_t, typename table_t, typename pos_t>
PE_HOST_DEVICE void apply_dropout(const AddPeArgs<scalar_t, table_t, pos_t>& a, int64_t first,
                                  at::opmath_type<scalar_t> (&values)[W]) {
  using acc_t = at::opmath_type<scalar_t>;
  const uint64_t seed = a.seed_on_device != nullptr ? static_cast<uint64_t>(*a.seed_on_device) : a.seed;
  PhiloxWords words = philox4x32_10(static_cast<uint64_t>(first) / 4, seed);
  PE_UNROLL
  for (int k = 0; k < W; ++k) {
    const uint64_t index = static_cast<uint64_t>(first + k);
    if (k > 0 && index % 4 == 0) words = philox4x32_10(index / 4, seed);
    values[k] = dropout_keeps(words.w[index % 4], a.dropout_threshold) ? values[k] * a.keep_scale : acc_t(0);
  }
}

// The columns [col0, col0 + W) of every position this thread visits, for batch rows [batch_begin, batch_end).
// W > 1 moves 16 bytes per access (the host checked alignment and unit column strides); W == 1 goes element-wise.
template <int W, Variant kVariant, typename scalar_t, typename table_t>
PE_HOST_DEVICE void add_pe_span(const AddPeArgs<scalar_t, table_t, position_t<kVariant>>& a, int64_t col0,
                                int64_t first_l, int64_t l_step, int64_t batch_begin, int64_t batch_end) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kGeneralCase = kVariant != Variant::kPlain;
  int64_t first_freq;
  const Wave wave = column_wave(a.spec, col0, &first_freq);
  double freqs[W];
  if (kVariant == Variant::kFractional || a.table == nullptr) {  // an odd concatenated row's zero column reads none
    const int count = wave == Wave::kZero ? 0 : (W > 1 && a.spec.layout == Layout::kInterleaved ? W / 2 : W);
    PE_UNROLL
    for (int m = 0; m < W; ++m) freqs[m] = m < count ? a.freqs[first_freq + m] : 0.0;
  }
  const bool per_row = kGeneralCase && a.positions_per_row();
  for (int64_t l = first_l; l < a.seq_len; l += l_step) {
    acc_t pe[W];
    if (!per_row)
      span_pe<W, kVariant>(a, kGeneralCase ? a.position(batch_begin, l) : a.offset + l, col0, wave, freqs, pe);
    for (int64_t b = batch_begin; b < batch_end; ++b) {
      if (per_row) span_pe<W, kVariant>(a, a.position(b, l), col0, wave, freqs, pe);
      acc_t sums[W];
      if (a.x != nullptr) {
        scalar_t loaded[W];
        load_span<W>(a.x + b * a.x_stride_b + l * a.x_stride_l + col0 * a.x_stride_d, loaded);
        PE_UNROLL
        for (int k = 0; k < W; ++k) sums[k] = static_cast<acc_t>(loaded[k]) * a.scale + pe[k];
      } else {
        PE_UNROLL
        for (int k = 0; k < W; ++k) sums[k] = pe[k];
      }
      if (kGeneralCase && a.dropout_threshold > 0)
        apply_dropout<W>(a, (b * a.seq_len + l) * a.spec.d_model + col0, sums);
      scalar_t values[W];
      PE_UNROLL
      for (int k = 0; k < W; ++k) values[k] = static_cast<scalar_t>(sums[k]);
      store_span<W>(a.out + b * a.out_stride_b + l * a.out_stride_l + col0 * a.out_stride_d, values);
    }
  }
}

// Everything thread (thread_x, thread_y) of block (block_x, block_y) does. VEC is the config's vec.
template <int VEC, Variant kVariant, typename scalar_t, typename table_t>
PE_HOST_DEVICE void add_pe_thread(const AddPeArgs<scalar_t, table_t, position_t<kVariant>>& a, const LaunchConfig& cfg,
                                  int64_t block_x, int64_t block_y, int thread_x, int thread_y) {
  const int64_t batch_begin = block_y * cfg.batch_per_block;
  const int64_t batch_end = min64(a.batch, batch_begin + cfg.batch_per_block);
  const int64_t first_l = block_x * cfg.grid.threads_y + thread_y;
  const int64_t l_step = cfg.grid.blocks_x * cfg.grid.threads_y;
  for (int64_t chunk = thread_x; chunk < cfg.chunks; chunk += cfg.grid.threads_x) {
    const int64_t col0 = chunk * VEC;
    if (col0 + VEC <= a.spec.d_model) {
      add_pe_span<VEC, kVariant>(a, col0, first_l, l_step, batch_begin, batch_end);
    } else {  // the row's tail, narrower than a vector: element by element
      for (int64_t col = col0; col < a.spec.d_model; ++col) {
        add_pe_span<1, kVariant>(a, col, first_l, l_step, batch_begin, batch_end);
      }
    }
  }
}

}  // namespace pe_ext::sinusoidal::cuda
