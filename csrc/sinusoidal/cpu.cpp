// CPU kernels. Positions are cut into tiles whose pe rows (computed with sinusoidal/math.h, or read from the table)
// stay in cache while every batch row of the tile streams through. Rows are written in chunks by per-dtype row
// functions that the compiler vectorizes (dropout's Philox words included), cloned for AVX-512 and AVX2 machines
// and chosen at load time; outputs larger than the cache are written with non-temporal stores.
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

constexpr int64_t kTileValues = 8192;          // pe values per tile: 32 KiB of float, kept in L1/L2
constexpr int64_t kElementsPerTask = 1 << 15;  // enough work per parallel task to pay for its start (as ATen's grain)
constexpr int64_t kRowChunk = 1024;            // a row is written in chunks of this many elements
constexpr int64_t kStreamingBytes = 16 << 20;  // outputs from this size on (half of a 32 MiB L3) are streamed

// --- Row functions over contiguous storage bits (common/cpu_rows.h), which the compiler vectorizes.

// out[j] = x[j] * scale + pe[j] for one contiguous row.
template <typename scalar_t, typename E = Element<scalar_t>>
PE_ROW_CLONES void add_row(const typename E::storage* x, const typename E::acc* pe, typename E::acc scale,
                           typename E::storage* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = E::store(E::load(x[j]) * scale + pe[j]);
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

// pe(pos, :) in float: with the vectorized PolynomialSinCos when every angle of the row is within its limit
// (max_abs_freq: the largest |freqs[i]|), else with the library's sin and cos.
template <typename pos_t>
PE_ROW_CLONES void pe_row_float(const EncodingSpec& s, pos_t pos, const double* freqs, double max_abs_freq,
                                float* row) {
  if (std::fabs(static_cast<double>(pos)) * max_abs_freq < pe_ext::cpu::kPolynomialAngleLimit) {
    pe_row<float>(s, pos, freqs, row, pe_ext::cpu::PolynomialSinCos());
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
        table_stride_l_(table_ ? p.table.stride(0) : 0),
        table_stride_d_(table_ ? p.table.stride(1) : 0),
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

// --- Writes one output row chunk by chunk: x * scale + pe, then dropout. With dropout, the chunk's Philox words
// come first (element (b, l, j) has the logical index (b * seq_len + l) * d_model + j); a streamed output is
// computed into scratch, then streamed out.
template <typename scalar_t>
class RowWriter {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  struct Scratch {
    alignas(64) uint32_t words[kRowChunk + 4];
    alignas(64) storage_t<scalar_t> values[kRowChunk];
  };

  explicit RowWriter(const SinusoidalProblem& p)
      : d_model_(p.d_model()),
        x_stride_d_(p.x.defined() ? p.x.stride(2) : 1),
        out_stride_d_(p.out.stride(2)),
        contiguous_rows_(p.x.defined() && x_stride_d_ == 1 && out_stride_d_ == 1),
        scale_(static_cast<acc_t>(p.scale)),
        dropout_(p.dropout > 0),
        threshold_(dropout_threshold(p.dropout)),
        keep_scale_(static_cast<acc_t>(1.0 / (1.0 - p.dropout))),
        seed_(p.seed),
        streaming_(pe_ext::cpu::kCanStream && contiguous_rows_ &&
                   p.out.numel() * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamingBytes) {}

  bool streaming() const { return streaming_; }

  // src: the row of x (nullptr when building a table), pe: its d_model values, dst: the row of out.
  void write(const scalar_t* src, const acc_t* pe, scalar_t* dst, uint64_t first_index, Scratch& s) const {
    for (int64_t j = 0; j < d_model_; j += kRowChunk) {
      const int64_t n = std::min(kRowChunk, d_model_ - j);
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
        add_row<scalar_t>(bits_of(src + j), pe + j, scale_, target, n);
      }
      if (streaming_) pe_ext::cpu::stream_store(dst + j, s.values, n * static_cast<int64_t>(sizeof(scalar_t)));
    }
  }

 private:
  // The Philox words of elements first .. first + n - 1, in scratch.
  const uint32_t* chunk_words(uint64_t first, int64_t n, Scratch& s) const {
    const uint64_t skip = first % 4;
    philox_words(first / 4, static_cast<int64_t>((skip + n + 3) / 4), seed_, s.words);
    return s.words + skip;
  }

  const int64_t d_model_, x_stride_d_, out_stride_d_;
  const bool contiguous_rows_;
  const acc_t scale_;
  const bool dropout_;
  const uint32_t threshold_;
  const acc_t keep_scale_;
  const uint64_t seed_;
  const bool streaming_;
};

// --- The tiling loop. Work item i = (tile i / batch, batch row i % batch): a task computes a tile's pe rows once for
// all its rows (once per row when positions differ between rows).
template <typename scalar_t, typename table_t, typename pos_t>
void add_pe_typed(const SinusoidalProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = p.batch(), seq_len = p.seq_len(), d_model = p.d_model();
  const scalar_t* x = p.x.defined() ? p.x.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = p.out.data_ptr<scalar_t>();
  const int64_t x_stride_b = x ? p.x.stride(0) : 0, x_stride_l = x ? p.x.stride(1) : 0;
  const int64_t out_stride_b = p.out.stride(0), out_stride_l = p.out.stride(1);
  const PeRows<scalar_t, table_t, pos_t> rows(p);
  const RowWriter<scalar_t> writer(p);

  const int64_t tile_len = std::max<int64_t>(1, kTileValues / std::max<int64_t>(1, d_model));
  const int64_t tiles = (seq_len + tile_len - 1) / tile_len;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, tile_len * d_model));
  at::parallel_for(0, tiles * batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile_values(rows.in_place() ? 0 : tile_len * d_model);
    typename RowWriter<scalar_t>::Scratch scratch;
    int64_t filled = -1;  // the work item whose pe the tile holds
    for (int64_t i = begin; i < end; ++i) {
      const int64_t tile = i / batch, b = i % batch;
      const int64_t l_begin = tile * tile_len, l_end = std::min(seq_len, l_begin + tile_len);
      const int64_t key = rows.per_batch_row() ? i : tile * batch;
      if (!rows.in_place() && key != filled) {
        for (int64_t l = l_begin; l < l_end; ++l) rows.fill(rows.position(b, l), &tile_values[(l - l_begin) * d_model]);
        filled = key;
      }
      for (int64_t l = l_begin; l < l_end; ++l) {
        const acc_t* pe =
            rows.in_place() ? rows.row_in_place(rows.position(b, l)) : &tile_values[(l - l_begin) * d_model];
        writer.write(x ? x + b * x_stride_b + l * x_stride_l : nullptr, pe, out + b * out_stride_b + l * out_stride_l,
                     static_cast<uint64_t>((b * seq_len + l) * d_model), scratch);
      }
    }
    if (writer.streaming()) pe_ext::cpu::stream_fence();
  });
}

void add_pe_cpu(const SinusoidalProblem& p) {
  if (p.out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cpu_add_pe", [&] {
    if (p.positions.defined() && p.positions.scalar_type() == at::kDouble) {
      add_pe_typed<scalar_t, scalar_t, double>(p);  // fractional positions, never with a table
    } else if (p.table.defined() && p.table.scalar_type() != p.out.scalar_type()) {
      add_pe_typed<scalar_t, float, int64_t>(p);  // the module's float32 table under half/bfloat16/double data
    } else {
      add_pe_typed<scalar_t, scalar_t, int64_t>(p);
    }
  });
}

}  // namespace
}  // namespace pe_ext::sinusoidal

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { pe_ext::sinusoidal::register_kernels<pe_ext::sinusoidal::add_pe_cpu>(m); }
