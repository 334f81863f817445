// CPU kernels: positions (times batch rows) split across threads; each thread computes a position's pe row once
// (pe_math.h, or read from the table) and applies it to every batch row of that position it owns.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../pe_math.h"
#include "../pe_ops.h"

namespace pe_ext::cpu {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kElementsPerTask = 1 << 15;  // enough work per parallel task to pay for its start

// row[:] = pe(pos, :), from the table row or computed from the per-pair frequencies.
template <typename acc_t, typename table_t>
void fill_row(const AddPeProblem& p, int64_t l, const std::vector<acc_t>& freqs, std::vector<acc_t>& row) {
  const int64_t d_model = p.d_model();
  if (p.table.defined()) {
    const table_t* src = p.table.const_data_ptr<table_t>() + (p.offset + l) * p.table.stride(0);
    const int64_t stride = p.table.stride(1);
    for (int64_t j = 0; j < d_model; ++j) row[j] = static_cast<acc_t>(src[j * stride]);
  } else {
    pe_span<acc_t>(p.offset + l, 0, static_cast<int>(d_model), freqs.data(), row.data());
  }
}

template <typename scalar_t, typename table_t>
void add_pe_typed(const AddPeProblem& p) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = p.batch(), seq_len = p.seq_len(), d_model = p.d_model();
  std::vector<acc_t> freqs;
  if (!p.table.defined()) {
    freqs.resize((d_model + 1) / 2);
    for (int64_t i = 0; i < static_cast<int64_t>(freqs.size()); ++i) freqs[i] = pair_frequency<acc_t>(i, p.exponent);
  }
  const bool has_x = p.x.defined();
  const scalar_t* x = has_x ? p.x.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = p.out.data_ptr<scalar_t>();
  const int64_t xs_b = has_x ? p.x.stride(0) : 0, xs_l = has_x ? p.x.stride(1) : 0, xs_d = has_x ? p.x.stride(2) : 0;
  const int64_t os_b = p.out.stride(0), os_l = p.out.stride(1), os_d = p.out.stride(2);
  const bool unit_stride = os_d == 1 && (!has_x || xs_d == 1);
  const acc_t scale = static_cast<acc_t>(p.scale);

  // Work item i is (position l = i / batch, batch row b = i % batch): a task recomputes pe only when l changes.
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, d_model));
  at::parallel_for(0, seq_len * batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(d_model);
    int64_t row_l = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t l = i / batch, b = i % batch;
      if (l != row_l) {
        fill_row<acc_t, table_t>(p, l, freqs, row);
        row_l = l;
      }
      scalar_t* dst = out + b * os_b + l * os_l;
      if (!has_x) {
        for (int64_t j = 0; j < d_model; ++j) dst[j * os_d] = static_cast<scalar_t>(row[j]);
        continue;
      }
      const scalar_t* src = x + b * xs_b + l * xs_l;
      if (unit_stride) {  // the common case, written so the compiler vectorizes it
        for (int64_t j = 0; j < d_model; ++j) {
          dst[j] = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * scale + row[j]);
        }
      } else {
        for (int64_t j = 0; j < d_model; ++j) {
          dst[j * os_d] = static_cast<scalar_t>(static_cast<acc_t>(src[j * xs_d]) * scale + row[j]);
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
