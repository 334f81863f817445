// CPU kernels. Positions are cut into tiles whose pe rows (computed with pe_math.h, or read from the table) stay in
// cache while every batch row of the tile streams through; the add itself runs in per-dtype row functions that the
// compiler vectorizes, cloned for AVX2/FMA/F16C machines and chosen at load time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../pe_math.h"
#include "../pe_ops.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(PE_EXT_SANITIZE)
#define PE_ROW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))
#else
#define PE_ROW_CLONES
#endif

namespace pe_ext::cpu {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kTileValues = 8192;         // pe values per tile: 32 KiB of float, kept in L1/L2
constexpr int64_t kElementsPerTask = 1 << 16;  // enough work per parallel task to pay for its start

// --- Row functions: out[j] = x[j] * scale + pe[j] for one contiguous row. Plain loops, written so that the
// compiler vectorizes them; the bfloat16 conversions are the branch-free bit forms of c10::BFloat16's.

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

PE_ROW_CLONES void add_row(const float* x, const float* pe, float scale, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * scale + pe[j];
}

PE_ROW_CLONES void add_row(const double* x, const double* pe, double scale, double* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * scale + pe[j];
}

PE_ROW_CLONES void add_row(const c10::BFloat16* x, const float* pe, float scale, c10::BFloat16* out, int64_t n) {
  const auto* xb = reinterpret_cast<const uint16_t*>(x);
  auto* ob = reinterpret_cast<uint16_t*>(out);
  for (int64_t j = 0; j < n; ++j) ob[j] = float_to_bf16(bf16_to_float(xb[j]) * scale + pe[j]);
}

PE_ROW_CLONES void add_row(const c10::Half* x, const float* pe, float scale, c10::Half* out, int64_t n) {
#if defined(__FLT16_MAX__)  // a native _Float16: F16C conversions in the AVX2 clone, same rounding as c10::Half
  const auto* xh = reinterpret_cast<const _Float16*>(x);
  auto* oh = reinterpret_cast<_Float16*>(out);
  for (int64_t j = 0; j < n; ++j) oh[j] = static_cast<_Float16>(static_cast<float>(xh[j]) * scale + pe[j]);
#else
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<c10::Half>(static_cast<float>(x[j]) * scale + pe[j]);
#endif
}

// Table rows of a reduced-precision dtype, widened to float for the tile.
PE_ROW_CLONES void widen_row(const c10::BFloat16* src, float* dst, int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(bits[j]);
}

PE_ROW_CLONES void widen_row(const c10::Half* src, float* dst, int64_t n) {
#if defined(__FLT16_MAX__)
  const auto* halves = reinterpret_cast<const _Float16*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(halves[j]);
#else
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
#endif
}

// The same for any strides (and for building a table, x == nullptr: out = pe).
template <typename scalar_t, typename acc_t>
void add_row_strided(const scalar_t* x, int64_t x_stride, const acc_t* pe, acc_t scale, scalar_t* out,
                     int64_t out_stride, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t value = x == nullptr ? pe[j] : static_cast<acc_t>(x[j * x_stride]) * scale + pe[j];
    out[j * out_stride] = static_cast<scalar_t>(value);
  }
}

// With dropout: element j has logical index first_index + j; one Philox call serves 4 consecutive indices.
template <typename scalar_t, typename acc_t>
void add_row_dropout(const scalar_t* x, int64_t x_stride, const acc_t* pe, acc_t scale, scalar_t* out,
                     int64_t out_stride, int64_t n, uint64_t first_index, double p, uint64_t seed) {
  const acc_t keep_scale = static_cast<acc_t>(1.0 / (1.0 - p));
  PhiloxWords words = philox4x32_10(first_index / 4, seed);
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t index = first_index + static_cast<uint64_t>(j);
    if (j > 0 && index % 4 == 0) words = philox4x32_10(index / 4, seed);
    const acc_t value = x == nullptr ? pe[j] : static_cast<acc_t>(x[j * x_stride]) * scale + pe[j];
    out[j * out_stride] = static_cast<scalar_t>(dropout_keeps(words, index, p) ? value * keep_scale : acc_t(0));
  }
}

// --- The kernel.

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
  std::vector<double> freqs;
  if (!has_table) {
    freqs.resize(p.spec.num_freqs);
    for (size_t i = 0; i < freqs.size(); ++i) freqs[i] = frequency(p.spec, static_cast<int64_t>(i));
  }
  auto fill_row = [&](int64_t pos, acc_t* row) {
    if (pos == p.padding_idx || alpha == acc_t(0)) {  // alpha 0: backward's dropout-mask pass needs no pe
      std::fill(row, row + d_model, acc_t(0));
      return;
    }
    if (!has_table) {
      pe_row<acc_t>(p.spec, pos, freqs.data(), row);
    } else if constexpr (std::is_same_v<table_t, c10::BFloat16> || std::is_same_v<table_t, c10::Half>) {
      if (ts_d == 1) {
        widen_row(table + pos * ts_l, row, d_model);
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

  const int64_t tile_len = std::max<int64_t>(1, kTileValues / std::max<int64_t>(1, d_model));
  const int64_t tiles = (seq_len + tile_len - 1) / tile_len;
  // Work item i = (tile i / batch, batch row i % batch): a task computes a tile's pe rows once for all its rows
  // (once per row when positions differ between rows).
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, tile_len * d_model));
  at::parallel_for(0, tiles * batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile_values(table_in_place ? 0 : tile_len * d_model);
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
        if (p.dropout > 0) {
          add_row_dropout(src, xs_d, pe, scale, dst, os_d, d_model, static_cast<uint64_t>((b * seq_len + l) * d_model),
                          p.dropout, p.seed);
        } else if (contiguous_rows) {
          add_row(src, pe, scale, dst, d_model);
        } else {
          add_row_strided(src, xs_d, pe, scale, dst, os_d, d_model);
        }
      }
    }
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
