// CPU kernels. Positions are cut into tiles whose pe rows (computed with pe_math.h, or read from the table) stay in
// cache while every batch row of the tile streams through. Rows are written in chunks by per-dtype row functions
// that the compiler vectorizes (dropout's Philox words included), cloned for AVX-512 and AVX2 machines and chosen at
// load time; outputs larger than the cache are written with non-temporal stores.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/macros/Macros.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "sinusoidal/math.h"
#include "sinusoidal/ops.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(PE_EXT_SANITIZE)
#define PE_ROW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#else
#define PE_ROW_CLONES
#endif

namespace pe_ext::cpu {
namespace {

constexpr int64_t kTileValues = 8192;         // pe values per tile: 32 KiB of float, kept in L1/L2
constexpr int64_t kElementsPerTask = 1 << 15;  // enough work per parallel task to pay for its start (as ATen's grain)
constexpr int64_t kRowChunk = 1024;            // a row is written in chunks of this many elements
constexpr int64_t kStreamingBytes = 16 << 20;  // outputs from this size on (half of a 32 MiB L3) are streamed

// --- Row functions. Each dtype is handled as its storage bits and the type it computes in (float, double for
// float64), with branch-free conversions (bfloat16: round to nearest even; float16: c10's portable IEEE forms), so
// that the compiler vectorizes every loop below. PE_ROW_CLONES builds each for AVX-512, AVX2 and baseline x86-64.

inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline uint16_t float_to_bf16(float value) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return value != value ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

template <typename scalar_t>
struct Element {  // float, double: stored as computed
  using storage = scalar_t;
  using acc = scalar_t;
  static acc load(storage v) { return v; }
  static storage store(acc v) { return v; }
};

template <>
struct Element<c10::BFloat16> {
  using storage = uint16_t;
  using acc = float;
  static acc load(storage v) { return bf16_to_float(v); }
  static storage store(acc v) { return float_to_bf16(v); }
};

template <>
struct Element<c10::Half> {
  using storage = uint16_t;
  using acc = float;
  static acc load(storage v) { return c10::detail::fp16_ieee_to_fp32_value(v); }
  static storage store(acc v) { return c10::detail::fp16_ieee_from_fp32_value(v); }
};

template <typename scalar_t>
using storage_t = typename Element<scalar_t>::storage;
template <typename scalar_t>
using acc_type = typename Element<scalar_t>::acc;

template <typename scalar_t>
storage_t<scalar_t>* bits_of(scalar_t* p) {
  return reinterpret_cast<storage_t<scalar_t>*>(p);
}
template <typename scalar_t>
const storage_t<scalar_t>* bits_of(const scalar_t* p) {
  return reinterpret_cast<const storage_t<scalar_t>*>(p);
}

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

// sin and cos of a float angle as glibc's sinf/cosf give them (within an ulp), but branch-free, so that a row of
// them vectorizes: the angle is reduced modulo pi/2 in double (pi/2 in two parts, with FMAs: exact to ~1e-16 while
// |angle| < 2^50, kPolynomialAngleLimit), then sin and cos of the remainder (|r| <= pi/4) are Taylor polynomials in
// double (truncation error < 1e-11) rounded once to float. The quotient is rounded by adding 1.5 * 2^52, whose ulp
// is 1, rather than with rint (which the compiler does not vectorize while FP exceptions are honoured); the sum's
// low bits are the quotient mod 4, the quadrant.
struct PolynomialSinCos {
  C10_ALWAYS_INLINE void operator()(float angle, float* s, float* c) const {  // inlined, or no loop vectorizes
    constexpr double kTwoOverPi = 0.63661977236758134;
    constexpr double kHalfPi = 1.5707963267948966;        // pi/2 rounded to double
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
        r + r * r2 *
                (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (-1.0 / 39916800)))));
    const double cos_r =
        1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 +
                                                                       r2 * (-1.0 / 3628800 + r2 / 479001600)))));
    const double sin_a = quadrant & 1 ? cos_r : sin_r, cos_a = quadrant & 1 ? sin_r : cos_r;
    // Signs as factors: a selected negation is not if-converted, and the loop would not vectorize.
    const double sin_sign = quadrant & 2 ? -1.0 : 1.0, cos_sign = (quadrant + 1) & 2 ? -1.0 : 1.0;
    *s = static_cast<float>(sin_a * sin_sign);
    *c = static_cast<float>(cos_a * cos_sign);
  }
};
constexpr double kPolynomialAngleLimit = 0x1p50;

// pe(pos, :) in float: with PolynomialSinCos when every angle of the row is within its limit (max_freq: the largest
// of freqs), else with the library's sin and cos.
PE_ROW_CLONES void pe_row_float(const PeSpec& s, int64_t pos, const double* freqs, double max_freq, float* row) {
  if (static_cast<double>(pos) * max_freq < kPolynomialAngleLimit) {
    pe_row<float>(s, pos, freqs, row, PolynomialSinCos());
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

// --- Non-temporal stores. An output larger than the cache is evicted before anyone reads it again; writing it with
// streaming stores skips reading each destination line into the cache first, which ordinary stores do: for x + pe
// that is a third of the memory traffic. Rows are computed into a chunk of scratch in L1, then streamed out.
#if defined(__x86_64__) || defined(_M_X64)
constexpr bool kCanStream = true;

void stream_store(void* dst, const void* src, int64_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
  std::memcpy(d, s, head);
  for (int64_t i = head; i + 16 <= bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  }
  const int64_t tail = head + (bytes - head) / 16 * 16;
  std::memcpy(d + tail, s + tail, bytes - tail);
}

void stream_fence() { _mm_sfence(); }  // streaming stores are weakly ordered: publish them before the task ends
#else
constexpr bool kCanStream = false;
void stream_store(void* dst, const void* src, int64_t bytes) { std::memcpy(dst, src, bytes); }
void stream_fence() {}
#endif

// --- The kernel.

// frequency(s, i) for every i < s.num_freqs. A call computes one row per position, so at decoding (one position a
// call) the num_freqs exps would cost more than the row; the calling thread keeps the last spec's.
const std::vector<double>& frequencies_of(const PeSpec& s) {
  thread_local PeSpec cached_spec;
  thread_local std::vector<double> cached;
  if (cached.size() != static_cast<size_t>(s.num_freqs) || cached_spec.freq_step != s.freq_step ||
      cached_spec.freq_scale != s.freq_scale) {
    cached.resize(s.num_freqs);
    for (int64_t i = 0; i < s.num_freqs; ++i) cached[i] = frequency(s, i);
    cached_spec = s;
  }
  return cached;
}

template <typename scalar_t, typename table_t>
void add_pe_typed(const AddPeProblem& p) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = p.batch(), seq_len = p.seq_len(), d_model = p.d_model();
  const bool has_x = p.x.defined(), has_table = p.table.defined();
  const scalar_t* x = has_x ? p.x.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = p.out.data_ptr<scalar_t>();
  const int64_t xs_b = has_x ? p.x.stride(0) : 0, xs_l = has_x ? p.x.stride(1) : 0, xs_d = has_x ? p.x.stride(2) : 1;
  const int64_t os_b = p.out.stride(0), os_l = p.out.stride(1), os_d = p.out.stride(2);
  const bool contiguous_rows = has_x && xs_d == 1 && os_d == 1;
  const acc_t scale = static_cast<acc_t>(p.scale);

  // position(b, l) = offset + (positions[b, l] if given, else l); pe(padding_idx, :) = 0; pe scaled by alpha.
  const int64_t* positions = p.positions.defined() ? p.positions.const_data_ptr<int64_t>() : nullptr;
  const int64_t ps_b = positions ? p.positions.stride(0) : 0, ps_l = positions ? p.positions.stride(1) : 0;
  const bool per_row = positions != nullptr && ps_b != 0;  // else one pe row serves the whole batch
  auto position = [&](int64_t b, int64_t l) { return p.offset + (positions ? positions[b * ps_b + l * ps_l] : l); };
  const acc_t alpha = p.alpha.defined() ? *p.alpha.const_data_ptr<acc_t>() : acc_t(1);

  // Table rows already in acc_t and contiguous are used in place; anything else is converted or computed per tile.
  const table_t* table = has_table ? p.table.const_data_ptr<table_t>() : nullptr;
  const int64_t ts_l = has_table ? p.table.stride(0) : 0, ts_d = has_table ? p.table.stride(1) : 0;
  const bool table_in_place =
      has_table && std::is_same_v<table_t, acc_t> && (ts_d == 1 || d_model <= 1) && !p.alpha.defined();
  const std::vector<acc_t> zero_row(table_in_place && p.padding_idx >= 0 ? d_model : 0, acc_t(0));
  static const std::vector<double> kNoFrequencies;
  const std::vector<double>& freqs = has_table ? kNoFrequencies : frequencies_of(p.spec);
  // freq(i) is the exp of a linear function of i, so monotonic: its largest value is at one end.
  const double max_freq = freqs.empty() ? 0.0 : std::max(freqs.front(), freqs.back());
  auto fill_row = [&](int64_t pos, acc_t* row) {
    if (pos == p.padding_idx || alpha == acc_t(0)) {  // alpha 0: backward's dropout-mask pass needs no pe
      std::fill(row, row + d_model, acc_t(0));
      return;
    }
    if (!has_table) {
      if constexpr (std::is_same_v<acc_t, float>) {
        pe_row_float(p.spec, pos, freqs.data(), max_freq, row);
      } else {
        pe_row<acc_t>(p.spec, pos, freqs.data(), row);
      }
    } else if constexpr (std::is_same_v<table_t, c10::BFloat16> || std::is_same_v<table_t, c10::Half>) {
      if (ts_d == 1) {
        widen_row<table_t>(bits_of(table + pos * ts_l), row, d_model);
      } else {
        for (int64_t j = 0; j < d_model; ++j) row[j] = static_cast<acc_t>(table[pos * ts_l + j * ts_d]);
      }
    } else {
      for (int64_t j = 0; j < d_model; ++j) row[j] = static_cast<acc_t>(table[pos * ts_l + j * ts_d]);
    }
    if (alpha != acc_t(1)) {
      for (int64_t j = 0; j < d_model; ++j) row[j] *= alpha;
    }
  };

  // One output row, chunk by chunk. With dropout, the chunk's Philox words come first (element (b, l, j) has the
  // logical index (b * seq_len + l) * d_model + j); a streamed output is computed into scratch, then streamed out.
  struct Scratch {
    alignas(64) uint32_t words[kRowChunk + 4];
    alignas(64) storage_t<scalar_t> values[kRowChunk];
  };
  const bool dropout = p.dropout > 0;
  const uint32_t threshold = dropout_threshold(p.dropout);
  const acc_t keep_scale = static_cast<acc_t>(1.0 / (1.0 - p.dropout));
  const bool streaming =
      kCanStream && contiguous_rows && p.out.numel() * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamingBytes;
  auto write_row = [&](const scalar_t* src, const acc_t* pe, scalar_t* dst, uint64_t first_index, Scratch& s) {
    for (int64_t j = 0; j < d_model; j += kRowChunk) {
      const int64_t n = std::min(kRowChunk, d_model - j);
      const uint32_t* words = nullptr;
      if (dropout) {
        const uint64_t first = first_index + static_cast<uint64_t>(j), skip = first % 4;
        philox_words(first / 4, static_cast<int64_t>((skip + n + 3) / 4), p.seed, s.words);
        words = s.words + skip;
      }
      if (!contiguous_rows) {
        add_row_strided(src == nullptr ? nullptr : src + j * xs_d, xs_d, pe + j, scale, words, threshold, keep_scale,
                        dst + j * os_d, os_d, n);
        continue;
      }
      storage_t<scalar_t>* target = streaming ? s.values : bits_of(dst + j);
      if (dropout) {
        add_row_dropout<scalar_t>(bits_of(src + j), pe + j, scale, words, threshold, keep_scale, target, n);
      } else {
        add_row<scalar_t>(bits_of(src + j), pe + j, scale, target, n);
      }
      if (streaming) stream_store(dst + j, s.values, n * static_cast<int64_t>(sizeof(scalar_t)));
    }
  };

  const int64_t tile_len = std::max<int64_t>(1, kTileValues / std::max<int64_t>(1, d_model));
  const int64_t tiles = (seq_len + tile_len - 1) / tile_len;
  // Work item i = (tile i / batch, batch row i % batch): a task computes a tile's pe rows once for all its rows
  // (once per row when positions differ between rows).
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, tile_len * d_model));
  at::parallel_for(0, tiles * batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile_values(table_in_place ? 0 : tile_len * d_model);
    Scratch scratch;
    int64_t filled = -1;  // the work item whose pe the tile holds
    for (int64_t i = begin; i < end; ++i) {
      const int64_t tile = i / batch, b = i % batch;
      const int64_t l_begin = tile * tile_len, l_end = std::min(seq_len, l_begin + tile_len);
      const int64_t key = per_row ? i : tile * batch;
      if (!table_in_place && key != filled) {
        for (int64_t l = l_begin; l < l_end; ++l) fill_row(position(b, l), tile_values.data() + (l - l_begin) * d_model);
        filled = key;
      }
      for (int64_t l = l_begin; l < l_end; ++l) {
        const int64_t pos = position(b, l);
        const acc_t* pe = !table_in_place       ? tile_values.data() + (l - l_begin) * d_model
                          : pos == p.padding_idx ? zero_row.data()
                                                 : reinterpret_cast<const acc_t*>(table) + pos * ts_l;
        scalar_t* dst = out + b * os_b + l * os_l;
        const scalar_t* src = has_x ? x + b * xs_b + l * xs_l : nullptr;
        write_row(src, pe, dst, static_cast<uint64_t>((b * seq_len + l) * d_model), scratch);
      }
    }
    if (streaming) stream_fence();
  });
}

void add_pe_cpu(const AddPeProblem& p) {
  if (p.out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cpu_add_pe", [&] {
    if (p.table.defined() && p.table.scalar_type() != p.out.scalar_type()) {
      add_pe_typed<scalar_t, float>(p);  // the module's float32 table under half/bfloat16/double data
    } else {
      add_pe_typed<scalar_t, scalar_t>(p);
    }
  });
}

}  // namespace
}  // namespace pe_ext::cpu

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) {
  using pe_ext::cpu::add_pe_cpu;
  m.impl("add_pe", &pe_ext::add_pe_op<add_pe_cpu>);
  m.impl("add_pe_", &pe_ext::add_pe_inplace_op<add_pe_cpu>);
  m.impl("add_pe_out", &pe_ext::add_pe_out_op<add_pe_cpu>);
  m.impl("fill_table_", &pe_ext::fill_table_op<add_pe_cpu>);
}
