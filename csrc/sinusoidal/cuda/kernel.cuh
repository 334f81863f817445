// The CUDA kernel's work, as plain functions of the launch grid. The __global__ kernels in sinusoidal.cu are thin
// wrappers around add_pe_thread, and the test-only grid emulator (sinusoidal/testing.cpp) runs the very same
// function over the same grid on the CPU, so CI exercises the grid mapping, vector widths, alignment fallbacks and
// tails without a GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include <c10/util/Exception.h>
#endif

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

// Where pe comes from, also a kernel of its own: a table; the frequencies with the angle rounded as the classic module
// rounds it (float32, or float64 for float64 data); or precise_angle's angle, reduced in double. A table kernel holds
// no sin/cos, and only the precise one holds float64 arithmetic.
enum class PeSource { kTable, kComputed, kComputedPrecise };

// Everything one kernel is compiled for.
template <int kVec_, Variant kVariant_, PeSource kSource_, typename scalar_t_, typename table_t_>
struct KernelSpec {
  static constexpr int kVec = kVec_;  // columns per chunk: 16-byte accesses when > 1, element by element when 1
  static constexpr Variant kVariant = kVariant_;
  static constexpr PeSource kSource = kSource_;
  static constexpr bool kGeneralCase = kVariant != Variant::kPlain;
  static constexpr bool kFromTable = kSource == PeSource::kTable;
  static constexpr bool kPreciseAngle = kSource == PeSource::kComputedPrecise;
  using scalar_t = scalar_t_;
  using table_t = table_t_;  // the table's elements: scalar_t or float (read by kTable only)
  using acc_t = at::opmath_type<scalar_t>;
  using pos_t = std::conditional_t<kVariant == Variant::kFractional, double, int64_t>;
  // float for the float32 angle: no float64 load or conversion in the loop over positions.
  using freq_t = std::conditional_t<kPreciseAngle || std::is_same_v<acc_t, double>, double, float>;
  // The blocks of kThreadsPerBlock threads one multiprocessor must hold at once (__launch_bounds__), which caps the
  // registers: 3 (80 registers) keep 768 threads and their 48 KiB of x loads in flight per multiprocessor; the general
  // kernels (positions, alpha, dropout's Philox) settle for 2 (128 registers, 32 KiB), where 3 would spill, and so do
  // the float32 tables under 16-bit data, whose rows take twice the bytes of x's (48 KiB in flight with x's; with 3
  // they spilled 32 bytes).
  static constexpr bool kWideTable = kFromTable && sizeof(table_t) > sizeof(scalar_t);
  static constexpr int kMinBlocksPerSm = kGeneralCase || kWideTable ? 2 : 3;
};

// One launch's data: out[b, l, :] = x[b, l, :] * scale + alpha * pe(position(b, l), :), all pointers at element
// (0, 0, 0); position(b, l) = offset + (positions[b, l] if given, else l); pe(padding_idx, :) = 0.
template <typename K>
struct AddPeArgs {
  using scalar_t = typename K::scalar_t;
  using acc_t = typename K::acc_t;
  using pos_t = typename K::pos_t;
  const scalar_t* x;                 // [batch, seq_len, d_model]; nullptr when building a table (x taken as 0)
  scalar_t* out;                     // [batch, seq_len, d_model]
  const typename K::table_t* table;  // [table_rows, d_model] (kTable)
  const typename K::freq_t* freqs;   // [spec.num_freqs], each exactly as the angle uses it (computed pe)
  const pos_t* positions;            // [batch, seq_len], batch stride 0 when shared; nullptr: offset + l
  const acc_t* alpha;                // one value; nullptr: 1
  int64_t x_stride_b, x_stride_l, x_stride_d;
  int64_t out_stride_b, out_stride_l, out_stride_d;
  int64_t table_rows, table_stride_l, table_stride_d;
  int64_t positions_stride_b, positions_stride_l;
  int64_t batch, seq_len, offset, padding_idx;
  acc_t scale;
  uint32_t dropout_threshold;  // dropout_threshold(p); 0: no dropout
  acc_t keep_scale;            // 1 / (1 - p)
  uint64_t seed;
  const int64_t* seed_on_device;  // one value, read instead of seed when not nullptr (a seed a CUDA graph redraws)
  EncodingSpec spec;              // d_model and the encoding

  // padding_idx -1 (none) is a position like any other: only a padding_idx >= 0 zeroes its pe.
  PE_HOST_DEVICE bool is_padding(pos_t pos) const { return padding_idx >= 0 && pos == static_cast<pos_t>(padding_idx); }
  // Whether batch rows can have different positions (else one pe row serves the whole batch).
  PE_HOST_DEVICE bool positions_per_row() const { return positions != nullptr && positions_stride_b != 0; }
};

// How the grid covers (batch, seq_len, d_model). A thread owns one chunk of `vec` columns and reads its frequencies
// once. Its rows are its positions (a grid-stride loop) times the batch rows of its block, which it moves
// kRowsInFlight at a time, all their loads issued before the first store (see RowGroup).
struct LaunchConfig {
  int vec;                  // columns per chunk: 16-byte accesses when > 1, element by element when 1
  int64_t chunks;           // ceil(d_model / vec)
  int64_t chunk_blocks;     // blocks side by side along a row, threads_x chunks each
  int64_t position_blocks;  // blocks along the positions, threads_y positions each per step of the grid-stride loop
  int64_t batch_per_block;  // batch rows each block applies a pe row to
  // threads_x threads cover chunks, threads_y positions share a block; blocks_x = chunk_blocks * position_blocks,
  // blocks_y batch groups.
  LaunchGrid grid;
};

constexpr int kThreadsPerBlock = 256;
constexpr int kRowsInFlight = 4;  // rows whose loads a thread issues together: 64 bytes
constexpr int64_t kMaxGridY = 65535;

// resident_blocks: the blocks of this kernel the whole device runs at once (multiprocessors times the occupancy the
// CUDA runtime computes for it). The grid is one such wave when the work allows, and grid-strides beyond.
inline LaunchConfig make_launch_config(int64_t batch, int64_t seq_len, int64_t d_model, int vec,
                                       int64_t resident_blocks) {
  LaunchConfig c;
  c.vec = vec;
  c.chunks = (d_model + vec - 1) / vec;
  LaunchGrid& g = c.grid;
  g.threads_x = static_cast<int>(min64(c.chunks, kThreadsPerBlock));
  g.threads_y = kThreadsPerBlock / g.threads_x;
  c.chunk_blocks = (c.chunks + g.threads_x - 1) / g.threads_x;  // one chunk per thread: wide rows span blocks
  const int64_t position_groups = (seq_len + g.threads_y - 1) / g.threads_y;
  c.position_blocks = min64(position_groups, (resident_blocks + c.chunk_blocks - 1) / c.chunk_blocks);
  g.blocks_x = c.chunk_blocks * c.position_blocks;
  // Few positions: split the batch across blocks too, so small-L shapes (decoding) still fill the GPU.
  const int64_t batch_groups = min64(min64(batch, (resident_blocks + g.blocks_x - 1) / g.blocks_x), kMaxGridY);
  c.batch_per_block = (batch + batch_groups - 1) / batch_groups;
  g.blocks_y = (batch + c.batch_per_block - 1) / c.batch_per_block;
  return c;
}

// The rows a thread visits: its positions first_l, first_l + l_step, ... below seq_len, times the batch rows
// [batch_begin, batch_end) of its block.
struct Walk {
  int64_t first_l, l_step, batch_begin, batch_end;
};

// A span of W columns starting at col0 as the encoding sees it, worked out once per thread. W > 1 only where the
// host made sure a span never crosses a layout boundary: interleaved spans start on an even column (whole sin/cos
// pairs, one frequency per pair), concatenated spans lie inside the sin or the cos block (one frequency per column).
template <int W, typename K>
struct Span {
  int64_t col0;
  Wave wave;                   // the first column's (every column's, in the concatenated layouts)
  typename K::freq_t freq[W];  // the frequencies it uses, in order (W / 2 of them when interleaved); 0 past them

  PE_HOST_DEVICE bool interleaved_pairs(const EncodingSpec& s) const {
    return W > 1 && s.layout == Layout::kInterleaved;
  }
};

template <int W, typename K>
PE_HOST_DEVICE Span<W, K> make_span(const AddPeArgs<K>& a, int64_t col0) {
  Span<W, K> span;
  span.col0 = col0;
  int64_t first_freq;
  span.wave = column_wave(a.spec, col0, &first_freq);
  const int count = span.wave == Wave::kZero ? 0 : (span.interleaved_pairs(a.spec) ? W / 2 : W);
  PE_UNROLL
  for (int m = 0; m < W; ++m) {
    span.freq[m] = typename K::freq_t(0);
    if constexpr (!K::kFromTable) {  // an odd concatenated row's zero column reads none
      if (m < count) span.freq[m] = a.freqs[first_freq + m];
    }
  }
  return span;
}

// pe at the span's columns of position pos, computed from its frequencies. Fixed bounds keep every array of the
// thread in registers.
template <int W, typename K>
PE_HOST_DEVICE void computed_pe(const EncodingSpec& s, const Span<W, K>& span, typename K::pos_t pos,
                                typename K::acc_t (&pe)[W]) {
  using acc_t = typename K::acc_t;
  if (span.interleaved_pairs(s)) {
    PE_UNROLL
    for (int m = 0; m < W / 2; ++m)
      sin_cos(pe_angle<acc_t, K::kPreciseAngle>(pos, span.freq[m]), &pe[2 * m], &pe[2 * m + 1]);
    return;
  }
  PE_UNROLL
  for (int k = 0; k < W; ++k) {
    acc_t sn = acc_t(0), cs = acc_t(0);
    if (span.wave != Wave::kZero) sin_cos(pe_angle<acc_t, K::kPreciseAngle>(pos, span.freq[k]), &sn, &cs);
    pe[k] = span.wave == Wave::kCos ? cs : sn;
  }
}

// How a group's kRowsInFlight rows (its slots) lie: along the batch (the next batch rows at one position: a block
// with at least kRowsInFlight batch rows, whose pe then serves them all) or along the positions (the thread's next
// positions in one batch row: small batches, batch 1 above all). Slot s is row (l + s * slot_l, b + s * slot_b).
struct GroupShape {
  bool along_positions;
  bool pe_per_slot;  // every slot has its own position: along the positions, or positions that differ per batch row
  int64_t slot_l, slot_b;
  int64_t x_step, out_step, positions_step;  // the same step in element offsets
  int64_t l_stride, b_stride;                // from one group to the next: l_stride between positions, b_stride
                                             // between the groups of one position
};

template <typename K>
PE_HOST_DEVICE GroupShape group_shape(const AddPeArgs<K>& a, const Walk& walk) {
  GroupShape g;
  g.along_positions = walk.batch_end - walk.batch_begin < kRowsInFlight;
  g.pe_per_slot = g.along_positions || (K::kGeneralCase && a.positions_per_row());
  g.slot_l = g.along_positions ? walk.l_step : 0;
  g.slot_b = g.along_positions ? 0 : 1;
  g.x_step = g.slot_l * a.x_stride_l + g.slot_b * a.x_stride_b;
  g.out_step = g.slot_l * a.out_stride_l + g.slot_b * a.out_stride_b;
  g.positions_step = g.slot_l * a.positions_stride_l + g.slot_b * a.positions_stride_b;
  g.l_stride = g.along_positions ? kRowsInFlight * walk.l_step : walk.l_step;
  g.b_stride = g.along_positions ? 1 : kRowsInFlight;
  return g;
}

// A group's rows between their loads and their stores.
template <int W, typename K>
struct RowGroup {
  int64_t l, b;                          // slot 0's row
  int rows;                              // slots before the walk ends (the rest do nothing)
  typename K::pos_t pos[kRowsInFlight];  // at slots that start a position
  bool zero_pe[kRowsInFlight];           // padding, or alpha 0 (backward's mask pass): pe is 0, nothing is read
  PackedVector<typename K::scalar_t, W> x[kRowsInFlight];
  PackedVector<typename K::table_t, W> table[kRowsInFlight];  // kTable, at slots that start a position
};

// Whether slot s gets a new pe; otherwise it keeps the previous slot's (or, at slot 0, the previous group's: the
// same position in earlier batch rows).
template <int W, typename K>
PE_HOST_DEVICE bool new_pe(const GroupShape& shape, const Walk& walk, const RowGroup<W, K>& g, int s) {
  return shape.pe_per_slot || (s == 0 && g.b == walk.batch_begin);
}

// A check the host could not make before the launch (it cannot read positions while a CUDA graph is captured): a
// device-side assert on the GPU, as torch's own indexing kernels raise; an IndexError in the grid emulator.
#if defined(__CUDA_ARCH__)
#define PE_KERNEL_CHECK(cond, message) CUDA_KERNEL_ASSERT((cond) && message)
#else
#define PE_KERNEL_CHECK(cond, message) TORCH_CHECK_INDEX(cond, message)
#endif

// First phase of a group: every load of its rows (positions, x, and table rows where pe changes), issued before
// anything is computed or stored, so that kRowsInFlight rows' bytes are in flight together and the pe math of the
// second phase overlaps them. out may alias x (in place), but only element for element: no load needs an earlier
// store.
template <int W, typename K>
PE_HOST_DEVICE void load_group(const AddPeArgs<K>& a, const Span<W, K>& span, const Walk& walk, const GroupShape& shape,
                               bool alpha_zero, RowGroup<W, K>& g) {
  using pos_t = typename K::pos_t;
  const int64_t x_row = g.b * a.x_stride_b + g.l * a.x_stride_l + span.col0 * a.x_stride_d;
  const int64_t positions_row = g.b * a.positions_stride_b + g.l * a.positions_stride_l;
  PE_UNROLL
  for (int s = 0; s < kRowsInFlight; ++s) {
    if (s >= g.rows) break;
    if (a.x != nullptr) g.x[s] = load_packed<W>(a.x + x_row + s * shape.x_step);
    if (!new_pe(shape, walk, g, s)) continue;
    if constexpr (K::kGeneralCase) {
      g.pos[s] = static_cast<pos_t>(a.offset) + (a.positions == nullptr
                                                     ? static_cast<pos_t>(g.l + s * shape.slot_l)
                                                     : a.positions[positions_row + s * shape.positions_step]);
      g.zero_pe[s] = alpha_zero || a.is_padding(g.pos[s]);
    } else {
      g.pos[s] = a.offset + g.l + s * shape.slot_l;
      g.zero_pe[s] = false;
    }
    if constexpr (K::kFromTable) {
      if (!g.zero_pe[s]) {
        if (K::kGeneralCase && a.positions != nullptr)
          PE_KERNEL_CHECK(g.pos[s] >= 0 && g.pos[s] < a.table_rows, "pe_ext: offset + positions outside the table");
        g.table[s] = load_packed<W>(a.table + g.pos[s] * a.table_stride_l + span.col0 * a.table_stride_d);
      }
    }
  }
}

// Word i (0 to 3) of a Philox result, by selects: indexing the array with a run-time i would put it in local memory.
PE_HOST_DEVICE uint32_t philox_word(const PhiloxWords& words, uint64_t i) {
  return i == 0 ? words.w[0] : i == 1 ? words.w[1] : i == 2 ? words.w[2] : words.w[3];
}

// Dropout of W consecutive elements, the first with logical index `first`: one Philox call per 4 indices.
template <int W, typename acc_t, typename K>
PE_HOST_DEVICE void apply_dropout(const AddPeArgs<K>& a, uint64_t seed, int64_t first, acc_t (&values)[W]) {
  PhiloxWords words = philox4x32_10(static_cast<uint64_t>(first) / 4, seed);
  PE_UNROLL
  for (int k = 0; k < W; ++k) {
    const uint64_t index = static_cast<uint64_t>(first + k);
    if (k > 0 && index % 4 == 0) words = philox4x32_10(index / 4, seed);
    values[k] = dropout_keeps(philox_word(words, index % 4), a.dropout_threshold) ? values[k] * a.keep_scale : acc_t(0);
  }
}

// Values a thread reads once, not per row.
template <typename K>
struct ThreadConstants {
  typename K::acc_t alpha;  // 1 without alpha
  uint64_t seed;            // the dropout seed (read from the device when it lives there)
};

// alpha * pe for slot s of a group, where pe changes.
template <int W, typename K>
PE_HOST_DEVICE void slot_pe(const AddPeArgs<K>& a, const Span<W, K>& span, const RowGroup<W, K>& g, int s,
                            typename K::acc_t alpha, typename K::acc_t (&pe)[W]) {
  using acc_t = typename K::acc_t;
  if (g.zero_pe[s]) {
    PE_UNROLL
    for (int k = 0; k < W; ++k) pe[k] = acc_t(0);
    return;
  }
  if constexpr (K::kFromTable) {
    PE_UNROLL
    for (int k = 0; k < W; ++k) pe[k] = static_cast<acc_t>(g.table[s].get(k));
  } else {
    computed_pe<W, K>(a.spec, span, g.pos[s], pe);
  }
  if (K::kGeneralCase && a.alpha != nullptr) {
    PE_UNROLL
    for (int k = 0; k < W; ++k) pe[k] *= alpha;
  }
}

// Second phase of a group: pe where it changes, then each row's sum, dropout and one store. pe carries over from the
// previous group (the same position, earlier batch rows).
template <int W, typename K>
PE_HOST_DEVICE void store_group(const AddPeArgs<K>& a, const Span<W, K>& span, const Walk& walk,
                                const GroupShape& shape, const ThreadConstants<K>& constants, const RowGroup<W, K>& g,
                                typename K::acc_t (&pe)[W]) {
  using acc_t = typename K::acc_t;
  using scalar_t = typename K::scalar_t;
  scalar_t* const out_row = a.out + g.b * a.out_stride_b + g.l * a.out_stride_l + span.col0 * a.out_stride_d;
  PE_UNROLL
  for (int s = 0; s < kRowsInFlight; ++s) {
    if (s >= g.rows) break;
    if (new_pe(shape, walk, g, s)) slot_pe<W, K>(a, span, g, s, constants.alpha, pe);
    acc_t sums[W];
    PE_UNROLL
    for (int k = 0; k < W; ++k) sums[k] = pe[k];
    if (a.x != nullptr) {
      PE_UNROLL
      for (int k = 0; k < W; ++k) sums[k] += static_cast<acc_t>(g.x[s].get(k)) * a.scale;
    }
    if (K::kGeneralCase && a.dropout_threshold > 0) {
      const int64_t b = g.b + s * shape.slot_b, l = g.l + s * shape.slot_l;
      apply_dropout<W>(a, constants.seed, (b * a.seq_len + l) * a.spec.d_model + span.col0, sums);
    }
    PackedVector<scalar_t, W> values{};
    PE_UNROLL
    for (int k = 0; k < W; ++k) values.set(k, static_cast<scalar_t>(sums[k]));
    store_packed<W>(out_row + s * shape.out_step, values);
  }
}

// The span's columns of every row of the walk, a group at a time. W > 1 moves 16 bytes per access (the host checked
// alignment and unit column strides); W == 1 goes element-wise.
template <int W, typename K>
PE_HOST_DEVICE void add_pe_span(const AddPeArgs<K>& a, int64_t col0, const Walk& walk, const GroupShape& shape,
                                const ThreadConstants<K>& constants) {
  const Span<W, K> span = make_span<W>(a, col0);
  const bool alpha_zero = K::kGeneralCase && a.alpha != nullptr && constants.alpha == typename K::acc_t(0);
  typename K::acc_t pe[W] = {};  // set by a group's first slot before any read (zeroed for GCC's warnings)
  RowGroup<W, K> g{};
  for (g.l = walk.first_l; g.l < a.seq_len; g.l += shape.l_stride) {
    int rows_along_l = 1;  // slots whose position is below seq_len
    PE_UNROLL
    for (int s = 1; s < kRowsInFlight; ++s) rows_along_l += g.l + s * shape.slot_l < a.seq_len;
    for (g.b = walk.batch_begin; g.b < walk.batch_end; g.b += shape.b_stride) {
      g.rows = shape.along_positions ? rows_along_l : static_cast<int>(min64(kRowsInFlight, walk.batch_end - g.b));
      load_group<W>(a, span, walk, shape, alpha_zero, g);
      store_group<W>(a, span, walk, shape, constants, g, pe);
    }
  }
}

template <typename K>
PE_HOST_DEVICE ThreadConstants<K> thread_constants(const AddPeArgs<K>& a) {
  ThreadConstants<K> c{typename K::acc_t(1), a.seed};
  if constexpr (K::kGeneralCase) {
    if (a.alpha != nullptr) c.alpha = *a.alpha;
    if (a.dropout_threshold > 0 && a.seed_on_device != nullptr) c.seed = static_cast<uint64_t>(*a.seed_on_device);
  }
  return c;
}

// Everything thread (thread_x, thread_y) of block (block_x, block_y) does: one chunk of columns (the row's tail,
// narrower than a vector, element by element), over every row of its walk.
template <typename K>
PE_HOST_DEVICE void add_pe_thread(const AddPeArgs<K>& a, const LaunchConfig& cfg, int64_t block_x, int64_t block_y,
                                  int thread_x, int thread_y) {
  // Block indices fit in 32 bits (gridDim.x < 2^31), where division is cheap.
  const auto chunk_block = static_cast<uint32_t>(block_x) % static_cast<uint32_t>(cfg.chunk_blocks);
  const auto position_block = static_cast<uint32_t>(block_x) / static_cast<uint32_t>(cfg.chunk_blocks);
  const int64_t chunk = static_cast<int64_t>(chunk_block) * cfg.grid.threads_x + thread_x;
  if (chunk >= cfg.chunks) return;
  Walk walk;
  walk.first_l = static_cast<int64_t>(position_block) * cfg.grid.threads_y + thread_y;
  walk.l_step = cfg.position_blocks * cfg.grid.threads_y;
  walk.batch_begin = block_y * cfg.batch_per_block;
  walk.batch_end = min64(a.batch, walk.batch_begin + cfg.batch_per_block);
  const GroupShape shape = group_shape(a, walk);
  const ThreadConstants<K> constants = thread_constants(a);
  const int64_t col0 = chunk * K::kVec;
  if (col0 + K::kVec <= a.spec.d_model) {
    add_pe_span<K::kVec>(a, col0, walk, shape, constants);
  } else {
    for (int64_t col = col0; col < a.spec.d_model; ++col) add_pe_span<1>(a, col, walk, shape, constants);
  }
}

}  // namespace pe_ext::sinusoidal::cuda
