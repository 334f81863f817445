// What every backend shares: the checked, normalized form of one call, and the op entry points built on it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>

namespace pe_ext {

// One call, checked and seen batch-first: out[b, l, :] = x[b, l, :] * scale + pe(offset + l, :).
// x is undefined when building a table (x taken as 0); table is undefined when pe is computed on the fly.
struct AddPeProblem {
  at::Tensor x;      // [batch, seq_len, d_model], any strides, or undefined
  at::Tensor out;    // [batch, seq_len, d_model], any non-overlapping strides
  at::Tensor table;  // [rows >= offset + seq_len, d_model], float32 or x's dtype, or undefined
  int64_t offset = 0;
  double scale = 1.0;
  double exponent = 0.0;  // frequency_exponent(base, d_model)

  int64_t batch() const { return out.size(0); }
  int64_t seq_len() const { return out.size(1); }
  int64_t d_model() const { return out.size(2); }
};

// Where a call writes its result: a fresh tensor (add_pe), x itself (add_pe_), or a caller's tensor (add_pe_out).
enum class Write { kNew, kInPlace, kOut };

// Check the arguments of add_pe / add_pe_ / add_pe_out (out is x for the in-place op) and view them batch-first.
// Every check runs before anything is written.
AddPeProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                            double scale, double base, int64_t seq_dim, const at::Tensor& out, Write write);

// Check the arguments of fill_table_ (out: [num_positions, d_model]) and view them as a problem with no x.
AddPeProblem prepare_fill_table(const at::Tensor& out, int64_t offset, double base);

// The ops, for a backend whose kernel computes one prepared problem.
using ProblemKernel = void (*)(const AddPeProblem&);

template <ProblemKernel kernel>
at::Tensor add_pe_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                     double base, int64_t seq_dim) {
  at::Tensor out = at::empty_like(x);
  kernel(prepare_add_pe(x, table, offset, scale, base, seq_dim, out, Write::kNew));
  return out;
}

template <ProblemKernel kernel>
void add_pe_inplace_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                       double base, int64_t seq_dim) {
  kernel(prepare_add_pe(x, table, offset, scale, base, seq_dim, x, Write::kInPlace));
}

template <ProblemKernel kernel>
void add_pe_out_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                   double base, int64_t seq_dim, const at::Tensor& out) {
  kernel(prepare_add_pe(x, table, offset, scale, base, seq_dim, out, Write::kOut));
}

template <ProblemKernel kernel>
void fill_table_op(const at::Tensor& out, int64_t offset, double base) {
  kernel(prepare_fill_table(out, offset, base));
}

}  // namespace pe_ext
