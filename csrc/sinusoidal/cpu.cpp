// CPU kernels. Positions are cut into tiles whose pe rows (computed with sinusoidal/math.h, or read from the table)
// stay in L2 while every batch row of the tile streams through. A tile whose rows lie back to back in x, out and pe is
// written as one span (else row by row) by per-dtype row functions that the compiler vectorizes (dropout's Philox
// words included), cloned for AVX-512 and AVX2 machines and chosen at load time; outputs larger than the cache are
// written with non-temporal stores.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_rows.h"
#include "common/cpu_sincos.h"
#include "common/philox.h"
#include "sinusoidal/math.h"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal {
namespace {

using pe_ext::cpu::bits_of;
using pe_ext::cpu::Element;
using pe_ext::cpu::storage_t;

// pe values per tile: 256 KiB of float, which stay in L2 while the batch rows stream past. Smaller tiles cost more
// per element (a jump to another batch row every few KiB; 32 KiB tiles measured 20-40% slower than torch.add).
constexpr int64_t kTileBytes = 256 << 10;
constexpr int64_t kElementsPerTask = 1 << 15;  // enough work per parallel task to pay for its start (as ATen's grain)
constexpr int64_t kChunk = 1024;               // elements per pass through scratch (dropout's words, streaming)
constexpr int64_t kStreamingBytes = 16 << 20;  // outputs from this size on (half of a 32 MiB L3) are streamed
// float32 outputs from this size (a quarter of that L3) up to kStreamingBytes are prefetched, kPrefetchAhead elements
// (8 KiB) ahead within each span of rows written at once: a fresh output of that size is no longer in cache, and
// torch's add wrote one faster (8x512x512 with a table, A/B: 0.90-1.00x the classic module without, 1.06-1.08x with);
// smaller outputs lost 3-10% to the prefetches.
constexpr int64_t kPrefetchBytes = 8 << 20;
constexpr int64_t kPrefetchAhead = 2048;

// --- Row functions over contiguous storage bits (common/cpu_rows.h), which the compiler vectorizes.

// out[r * out_stride + j] = x[r * x_stride + j] * scale + pe[j] for j < n and r < rows: contiguous rows that add the
// same pe (the batch rows of a tile), in one call, so that a decoding step's short rows pay no per-row dispatch.
template <typename scalar_t, typename E = Element<scalar_t>>
PE_ROW_CLONES void add_rows_vectorized(const typename E::storage* x, int64_t x_stride, const typename E::acc* pe,
                                       typename E::acc scale, typename E::storage* out, int64_t out_stride,
                                       int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, x += x_stride, out += out_stride) {
    for (int64_t j = 0; j < n; ++j) out[j] = E::store(E::load(x[j]) * scale + pe[j]);
  }
}

// add_rows with cpu_rows.h's AVX2 rows where this CPU has them and they serve: float16 rows, and float32 ones that are
// streamed (kStream: non-temporal stores) or prefetched (prefetch_ahead > 0). Returns whether it wrote the rows.
template <typename scalar_t, bool kStream, typename E = Element<scalar_t>>
bool add_rows_avx2(const typename E::storage* x, int64_t x_stride, const typename E::acc* pe, typename E::acc scale,
                   typename E::storage* out, int64_t out_stride, int64_t rows, int64_t n, int64_t prefetch_ahead) {
  constexpr bool kHalf = std::is_same_v<scalar_t, c10::Half>;
  if constexpr (kHalf || std::is_same_v<scalar_t, float>) {
    const bool float_rows_serve = kStream || prefetch_ahead > 0;  // else the compiled loop is as fast
    if (!pe_ext::cpu::has_avx2_rows() || (!kHalf && !float_rows_serve)) return false;
    for (int64_t r = 0; r < rows; ++r) {
      if constexpr (kHalf) {
        pe_ext::cpu::f16c_scale_add_row<kStream>(x + r * x_stride, pe, scale, out + r * out_stride, n);
      } else {
        pe_ext::cpu::avx2_scale_add_row<kStream>(x + r * x_stride, pe, scale, out + r * out_stride, n, prefetch_ahead);
      }
    }
    return true;
  }
  return false;
}

template <typename scalar_t, typename E = Element<scalar_t>>
void add_rows(const typename E::storage* x, int64_t x_stride, const typename E::acc* pe, typename E::acc scale,
              typename E::storage* out, int64_t out_stride, int64_t rows, int64_t n, int64_t prefetch_ahead = 0) {
  if (!add_rows_avx2<scalar_t, false>(x, x_stride, pe, scale, out, out_stride, rows, n, prefetch_ahead)) {
    add_rows_vectorized<scalar_t>(x, x_stride, pe, scale, out, out_stride, rows, n);
  }
}

// The same followed by dropout: element j is kept (and scaled by keep_scale) when its Philox word words[j] says so.
template <typename scalar_t, typename E = Element<scalar_t>>
PE_ROW_CLONES void add_row_dropout(const typename E::storage* x, const typename E::acc* pe, typename E::acc scale,
                                   const uint32_t* words, uint32_t threshold, typename E::acc keep_scale,
                                   typename E::storage* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const typename E::acc value = E::load(x[j]) * scale + pe[j];
    out[j] = E::store(dropout_keeps(words[j], threshold) ? value * keep_scale : typename E::acc(0));
  }
}

// Table rows of a reduced-precision dtype, widened to float for the tile.
template <typename scalar_t, typename E = Element<scalar_t>>
PE_ROW_CLONES void widen_row(const typename E::storage* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = E::load(src[j]);
}

// words[4k + w] = word w of Philox4x32-10(first_counter + k, seed), k < counters.
PE_ROW_CLONES void philox_words(uint64_t first_counter, int64_t counters, uint64_t seed, uint32_t* words) {
  for (int64_t k = 0; k < counters; ++k) {
    const PhiloxWords w = philox4x32_10(first_counter + static_cast<uint64_t>(k), seed);
    for (int i = 0; i < 4; ++i) words[4 * k + i] = w.w[i];
  }
}

// pe(pos, :) in float: with PolynomialSinCos (vectorized) when every angle of the row is within its limit
// (max_abs_freq: the largest |freqs[i]|), else with the library's sin and cos.
template <typename pos_t>
PE_ROW_CLONES void pe_row_float(const EncodingSpec& s, pos_t pos, const double* freqs, double max_abs_freq,
                                float* row) {
  if (std::fabs(static_cast<double>(pos)) * max_abs_freq < pe_ext::cpu::kPolynomialAngleLimit) {
    pe_row<float>(s, pos, freqs, row, pe_ext::cpu::PolynomialSinCosRuns());
  } else {
    pe_row<float>(s, pos, freqs, row);
  }
}

// The general form, for any strides, with dropout or without (words == nullptr), and for building a table
// (x == nullptr: x taken as 0).
template <typename scalar_t, typename acc_t>
void add_row_strided(const scalar_t* x, int64_t x_stride, const acc_t* pe, acc_t scale, const uint32_t* words,
                     uint32_t threshold, acc_t keep_scale, scalar_t* out, int64_t out_stride, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    acc_t value = x == nullptr ? pe[j] : static_cast<acc_t>(x[j * x_stride]) * scale + pe[j];
    if (words != nullptr) value = dropout_keeps(words[j], threshold) ? value * keep_scale : acc_t(0);
    out[j * out_stride] = static_cast<scalar_t>(value);
  }
}

// The largest |freqs[i]|: known for the built-in frequencies, read here for a caller's.
double max_abs_frequency(const SinusoidalProblem& p) {
  if (!std::isnan(p.max_abs_freq)) return p.max_abs_freq;
  const double* freqs = p.freqs.const_data_ptr<double>();
  double max_abs = 0.0;
  for (int64_t i = 0; i < p.spec.num_freqs; ++i) max_abs = std::max(max_abs, std::fabs(freqs[i]));
  return max_abs;
}

// --- Where pe rows come from: position(b, l) = offset + (positions[b, l] if given, else l), an int64 or (fractional
// positions) a double; pe(padding_idx, :) = 0; pe scaled by alpha. Table rows already in the math type, contiguous and
// unscaled are used in place; anything else is converted or computed into a tile.
template <typename scalar_t, typename table_t, typename pos_t>
class PeRows {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  explicit PeRows(const SinusoidalProblem& p)
      : p_(p),
        positions_(p.positions.defined() ? p.positions.const_data_ptr<pos_t>() : nullptr),
        positions_stride_b_(positions_ ? p.positions.stride(0) : 0),
        positions_stride_l_(positions_ ? p.positions.stride(1) : 0),
        alpha_(p.alpha.defined() ? *p.alpha.const_data_ptr<acc_t>() : acc_t(1)),
        table_(p.table.defined() ? p.table.const_data_ptr<table_t>() : nullptr),
        table_stride_l_(table_ ? p.table_stride_l() : 0),
        table_stride_d_(table_ ? p.table_stride_d() : 0),
        in_place_(table_ != nullptr && std::is_same_v<table_t, acc_t> && (table_stride_d_ == 1 || p.d_model() <= 1) &&
                  !p.alpha.defined()),
        zero_row_(in_place_ && p.padding_idx >= 0 ? p.d_model() : 0, acc_t(0)),
        freqs_(table_ ? nullptr : p.freqs.const_data_ptr<double>()),
        max_abs_freq_(table_ ? 0.0 : max_abs_frequency(p)) {}

  pos_t position(int64_t b, int64_t l) const {
    return static_cast<pos_t>(p_.offset) +
           (positions_ ? positions_[b * positions_stride_b_ + l * positions_stride_l_] : static_cast<pos_t>(l));
  }
  // Whether batch rows can have different positions (else one pe row serves the whole batch).
  bool per_batch_row() const { return positions_ != nullptr && positions_stride_b_ != 0; }
  bool in_place() const { return in_place_; }

  const acc_t* row_in_place(int64_t pos) const {
    return is_padding(pos) ? zero_row_.data() : reinterpret_cast<const acc_t*>(table_) + pos * table_stride_l_;
  }

  // The pe rows of positions l_begin .. l_end - 1 back to back in the table, or nullptr where they are not: explicit
  // positions, a padding row among them, or table rows with gaps.
  const acc_t* span_in_place(int64_t l_begin, int64_t l_end) const {
    if (positions_ != nullptr) return nullptr;
    const int64_t first = p_.offset + l_begin, last = p_.offset + l_end - 1;
    const bool rows_adjacent = table_stride_l_ == p_.d_model() || l_end - l_begin == 1;
    const bool padding_inside = p_.padding_idx >= 0 && p_.padding_idx >= first && p_.padding_idx <= last;
    if (!rows_adjacent || padding_inside) return nullptr;
    return row_in_place(first);
  }

  void fill(pos_t pos, acc_t* row) const {
    const int64_t d_model = p_.d_model();
    if (is_padding(pos) || alpha_ == acc_t(0)) {  // alpha 0: backward's dropout-mask pass needs no pe
      std::fill(row, row + d_model, acc_t(0));
      return;
    }
    if (table_ == nullptr) {
      if constexpr (std::is_same_v<acc_t, float>) {
        pe_row_float(p_.spec, pos, freqs_, max_abs_freq_, row);
      } else {
        pe_row<acc_t>(p_.spec, pos, freqs_, row);
      }
    } else if constexpr (std::is_integral_v<pos_t>) {  // fractional positions never come with a table
      read_table_row(pos, row);
    }
    if (alpha_ != acc_t(1)) {
      for (int64_t j = 0; j < d_model; ++j) row[j] *= alpha_;
    }
  }

 private:
  // padding_idx -1 (none) is a position like any other: only a padding_idx >= 0 zeroes its pe.
  bool is_padding(pos_t pos) const { return p_.padding_idx >= 0 && pos == static_cast<pos_t>(p_.padding_idx); }

  void read_table_row(int64_t pos, acc_t* row) const {
    const table_t* src = table_ + pos * table_stride_l_;
    if constexpr (std::is_same_v<table_t, c10::BFloat16> || std::is_same_v<table_t, c10::Half>) {
      if (table_stride_d_ == 1) {
        widen_row<table_t>(bits_of(src), row, p_.d_model());
        return;
      }
    }
    for (int64_t j = 0; j < p_.d_model(); ++j) row[j] = static_cast<acc_t>(src[j * table_stride_d_]);
  }

  const SinusoidalProblem& p_;
  const pos_t* positions_;
  const int64_t positions_stride_b_, positions_stride_l_;
  const acc_t alpha_;
  const table_t* table_;
  const int64_t table_stride_l_, table_stride_d_;
  const bool in_place_;
  const std::vector<acc_t> zero_row_;
  const double* freqs_;  // nullptr with a table
  const double max_abs_freq_;
};

// --- Writes output elements: x * scale + pe, then dropout; a row, or several rows that lie back to back. With
// dropout, each chunk's Philox words come first (element (b, l, j) has the logical index (b * seq_len + l) *
// d_model + j); a streamed output is computed into scratch chunk by chunk, then streamed out.
template <typename scalar_t>
class RowWriter {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  struct Scratch {
    alignas(64) uint32_t words[kChunk + 4];
    alignas(64) storage_t<scalar_t> values[kChunk];
  };

  explicit RowWriter(const SinusoidalProblem& p)
      : x_stride_d_(p.x.defined() ? p.x.stride(2) : 1),
        out_stride_d_(p.out.stride(2)),
        contiguous_rows_(p.x.defined() && x_stride_d_ == 1 && out_stride_d_ == 1),
        adjacent_rows_(contiguous_rows_ && p.x.stride(1) == p.d_model() && p.out.stride(1) == p.d_model()),
        scale_(static_cast<acc_t>(p.scale)),
        dropout_(p.dropout > 0),
        threshold_(dropout_threshold(p.dropout)),
        keep_scale_(static_cast<acc_t>(1.0 / (1.0 - p.dropout))),
        seed_(p.seed),
        streaming_(pe_ext::cpu::kCanStream && contiguous_rows_ && out_bytes(p) >= kStreamingBytes),
        prefetch_ahead_(
            std::is_same_v<scalar_t, float> && !streaming_ && out_bytes(p) >= kPrefetchBytes ? kPrefetchAhead : 0) {}

  bool streaming() const { return streaming_; }
  // Whether x's and out's rows lie back to back, so that consecutive rows can be written as one span.
  bool adjacent_rows() const { return adjacent_rows_; }

  // write() for `rows` rows that add the same pe values: row r reads src + r * src_stride, writes
  // dst + r * dst_stride, and its elements' logical indices start at first_index + r * index_stride.
  void write_rows(const scalar_t* src, int64_t src_stride, const acc_t* pe, scalar_t* dst, int64_t dst_stride,
                  int64_t rows, uint64_t first_index, uint64_t index_stride, int64_t count, Scratch& s) const {
    if (contiguous_rows_ && !dropout_) {  // the rows in one call: cached stores, or streamed from registers
      if (!streaming_) {
        add_rows<scalar_t>(bits_of(src), src_stride, pe, scale_, bits_of(dst), dst_stride, rows, count,
                           prefetch_ahead_);
        return;
      }
      if (add_rows_avx2<scalar_t, true>(bits_of(src), src_stride, pe, scale_, bits_of(dst), dst_stride, rows, count,
                                        /*prefetch_ahead=*/0)) {
        return;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      write(src == nullptr ? nullptr : src + r * src_stride, pe, dst + r * dst_stride,
            first_index + static_cast<uint64_t>(r) * index_stride, count, s);
    }
  }

  // src: x's first element (nullptr when building a table), pe: the count pe values, dst: out's first element;
  // count is d_model, or a multiple of it when adjacent_rows().
  void write(const scalar_t* src, const acc_t* pe, scalar_t* dst, uint64_t first_index, int64_t count,
             Scratch& s) const {
    const int64_t chunk = dropout_ || streaming_ ? kChunk : count;
    for (int64_t j = 0; j < count; j += chunk) {
      const int64_t n = std::min(chunk, count - j);
      const uint32_t* words = dropout_ ? chunk_words(first_index + static_cast<uint64_t>(j), n, s) : nullptr;
      if (!contiguous_rows_) {
        add_row_strided(src == nullptr ? nullptr : src + j * x_stride_d_, x_stride_d_, pe + j, scale_, words,
                        threshold_, keep_scale_, dst + j * out_stride_d_, out_stride_d_, n);
        continue;
      }
      storage_t<scalar_t>* target = streaming_ ? s.values : bits_of(dst + j);
      if (dropout_) {
        add_row_dropout<scalar_t>(bits_of(src + j), pe + j, scale_, words, threshold_, keep_scale_, target, n);
      } else {
        add_rows<scalar_t>(bits_of(src + j), 0, pe + j, scale_, target, 0, 1, n);
      }
      if (streaming_) pe_ext::cpu::stream_store(dst + j, s.values, n * static_cast<int64_t>(sizeof(scalar_t)));
    }
  }

 private:
  static int64_t out_bytes(const SinusoidalProblem& p) {
    return p.out.numel() * static_cast<int64_t>(sizeof(scalar_t));
  }

  // The Philox words of elements first .. first + n - 1, in scratch.
  const uint32_t* chunk_words(uint64_t first, int64_t n, Scratch& s) const {
    const uint64_t skip = first % 4;
    philox_words(first / 4, static_cast<int64_t>((skip + n + 3) / 4), seed_, s.words);
    return s.words + skip;
  }

  const int64_t x_stride_d_, out_stride_d_;
  const bool contiguous_rows_, adjacent_rows_;
  const acc_t scale_;
  const bool dropout_;
  const uint32_t threshold_;
  const acc_t keep_scale_;
  const uint64_t seed_;
  const bool streaming_;
  const int64_t prefetch_ahead_;  // > 0: float32 spans whose output lines are prefetched (kPrefetchBytes)
};

// Positions per tile: at most max_len (at least 1), in tiles of equal length. at::parallel_for splits work items by
// count, so a short last tile left its task with less work than the others: 16x256x768 (tiles of 85, 85, 85 and 1
// positions) ran 0.82x the classic module with a float32 table, 0.90x with tiles of 64.
int64_t balanced_tile_len(int64_t seq_len, int64_t max_len) {
  max_len = std::max<int64_t>(1, max_len);
  const int64_t tiles = std::max<int64_t>(1, (seq_len + max_len - 1) / max_len);
  return std::max<int64_t>(1, (seq_len + tiles - 1) / tiles);
}

// The calling thread's tile, kept between calls: a tile is too large for the stack, and a fresh one per task would
// be fresh memory to page-fault in on every call.
template <typename acc_t>
acc_t* thread_tile(int64_t values) {
  thread_local std::vector<acc_t> tile;
  if (tile.size() < static_cast<size_t>(values)) tile.resize(values);
  return tile.data();
}

// --- The tiling loop. Work item i = (tile i / batch, batch row i % batch): a task computes a tile's pe rows once for
// all its items (once per item when positions differ between batch rows), then writes the item's rows, as one span
// when they lie back to back in x, out and pe.
template <typename scalar_t, typename table_t, typename pos_t>
class TiledAdd {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  explicit TiledAdd(const SinusoidalProblem& p)
      : batch_(p.batch()),
        seq_len_(p.seq_len()),
        d_model_(p.d_model()),
        x_(p.x.defined() ? p.x.const_data_ptr<scalar_t>() : nullptr),
        out_(p.out.data_ptr<scalar_t>()),
        x_stride_b_(x_ ? p.x.stride(0) : 0),
        x_stride_l_(x_ ? p.x.stride(1) : 0),
        out_stride_b_(p.out.stride(0)),
        out_stride_l_(p.out.stride(1)),
        tile_len_(balanced_tile_len(seq_len_, kTileBytes / sizeof(acc_t) / std::max<int64_t>(1, d_model_))),
        tiles_((seq_len_ + tile_len_ - 1) / tile_len_),
        rows_(p),
        writer_(p) {}

  void run() const {
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, tile_len_ * d_model_));
    at::parallel_for(0, tiles_ * batch_, grain, [&](int64_t begin, int64_t end) { run_items(begin, end); });
  }

 private:
  struct Item {
    int64_t tile, b, l_begin, l_end;
  };

  Item item(int64_t i) const {
    const int64_t tile = i / batch_, l_begin = tile * tile_len_;
    return {tile, i % batch_, l_begin, std::min(seq_len_, l_begin + tile_len_)};
  }

  void run_items(int64_t begin, int64_t end) const {
    acc_t* tile = rows_.in_place() ? nullptr : thread_tile<acc_t>(tile_len_ * d_model_);
    typename RowWriter<scalar_t>::Scratch scratch;
    int64_t filled = -1;  // the tile, or with per-row positions the work item, whose pe `tile` holds
    for (int64_t i = begin; i < end;) {
      const Item it = item(i);
      // This task's items of the tile: batch rows it.b .. it.b + rows - 1, which add the same pe, unless positions
      // differ between batch rows.
      const int64_t rows = rows_.per_batch_row() ? 1 : std::min(end - i, batch_ - it.b);
      const int64_t key = rows_.per_batch_row() ? i : it.tile;
      if (tile != nullptr && key != filled) {
        for (int64_t l = it.l_begin; l < it.l_end; ++l) rows_.fill(rows_.position(it.b, l), tile_row(tile, it, l));
        filled = key;
      }
      write_items(it, rows, tile, scratch);
      i += rows;
    }
    if (writer_.streaming()) pe_ext::cpu::stream_fence();
  }

  // Writes batch rows it.b .. it.b + rows - 1 of the item's tile. tile: its pe rows, or nullptr when they are read
  // from the table in place.
  void write_items(const Item& it, int64_t rows, const acc_t* tile,
                   typename RowWriter<scalar_t>::Scratch& scratch) const {
    const uint64_t batch_row_elements = static_cast<uint64_t>(seq_len_ * d_model_);
    const acc_t* span = !writer_.adjacent_rows() ? nullptr
                        : tile != nullptr        ? tile
                                                 : rows_.span_in_place(it.l_begin, it.l_end);
    if (span != nullptr) {
      writer_.write_rows(x_row(it.b, it.l_begin), x_stride_b_, span, out_row(it.b, it.l_begin), out_stride_b_, rows,
                         first_index(it.b, it.l_begin), batch_row_elements, (it.l_end - it.l_begin) * d_model_,
                         scratch);
      return;
    }
    for (int64_t l = it.l_begin; l < it.l_end; ++l) {
      const acc_t* pe = tile != nullptr ? tile_row(tile, it, l) : rows_.row_in_place(rows_.position(it.b, l));
      writer_.write_rows(x_row(it.b, l), x_stride_b_, pe, out_row(it.b, l), out_stride_b_, rows, first_index(it.b, l),
                         batch_row_elements, d_model_, scratch);
    }
  }

  template <typename T>
  T* tile_row(T* tile, const Item& it, int64_t l) const {
    return tile + (l - it.l_begin) * d_model_;
  }
  const scalar_t* x_row(int64_t b, int64_t l) const { return x_ ? x_ + b * x_stride_b_ + l * x_stride_l_ : nullptr; }
  scalar_t* out_row(int64_t b, int64_t l) const { return out_ + b * out_stride_b_ + l * out_stride_l_; }
  uint64_t first_index(int64_t b, int64_t l) const { return static_cast<uint64_t>((b * seq_len_ + l) * d_model_); }

  const int64_t batch_, seq_len_, d_model_;
  const scalar_t* x_;
  scalar_t* out_;
  const int64_t x_stride_b_, x_stride_l_, out_stride_b_, out_stride_l_;
  const int64_t tile_len_, tiles_;  // positions per tile (kTileBytes of pe), and tiles along seq_len
  const PeRows<scalar_t, table_t, pos_t> rows_;
  const RowWriter<scalar_t> writer_;
};

void add_pe_cpu(const SinusoidalProblem& p) {
  if (p.out.numel() == 0) return;
  if (p.out.is_non_overlapping_and_dense()) {
    pe_ext::cpu::advise_huge_pages_if_untouched(p.out.data_ptr(), p.out.numel() * p.out.element_size());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cpu_add_pe", [&] {
    if (p.positions.defined() && p.positions.scalar_type() == at::kDouble) {
      TiledAdd<scalar_t, scalar_t, double>(p).run();  // fractional positions, never with a table
    } else if (p.table.defined() && p.table.scalar_type() != p.out.scalar_type()) {
      TiledAdd<scalar_t, float, int64_t>(p).run();  // the module's float32 table under half/bfloat16/double data
    } else {
      TiledAdd<scalar_t, scalar_t, int64_t>(p).run();
    }
  });
}

}  // namespace
}  // namespace pe_ext::sinusoidal

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { pe_ext::sinusoidal::register_kernels<pe_ext::sinusoidal::add_pe_cpu>(m); }
