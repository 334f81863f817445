// The rotary family's ops: their keyword options (spelled once, below), the checked form of one call that every
// backend computes, and the op entry points built on it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

#include "common/options.h"
#include "rotary/math.h"

namespace pe_ext::rotary {

// The keyword options every op of the family ends with, in schema order:
//   X(C++ parameter type, name, schema type, schema default)
// They drive the schemas' tails (ops.cpp), the kernels' parameter lists and RotaryOptions; autograd finds arguments
// in the schema by name. The Python twin of this list is pe_ext/rotary/schema.py's OPTIONS.
//   positions          int ids: (seq,) shared by the batch or (batch, seq); (total_tokens,) for packed tokens. A
//                      token's position is offset + its id (default: offset + its index along the sequence)
//   offset             added to every position (e.g. the length of a KV cache)
//   base               frequencies inv_freq(i) = 1 / base^(2i / rotary_dim), i < rotary_dim / 2, as Hugging Face
//                      computes them (float32 torch ops on the CPU; float64 for float64 data)
//   inv_freq           explicit frequencies instead (rotary_dim / 2 of them): every HF rope type is a choice of
//                      inv_freq and attention_scaling
//   rotary_dim         the leading columns of each head that rotate, the rest passing through (default: all, or
//                      2 * len(inv_freq), or cos's width)
//   style              "neox" (pairs (i, i + rotary_dim / 2): rotate_half) or "gptj" (pairs (2i, 2i + 1))
//   attention_scaling  factor on cos and sin (HF's yarn and longrope)
//   precise_angle      form and reduce the angle in double before the float32 sin/cos (default: the float32 product
//                      position * inv_freq, as Hugging Face computes it)
//   cu_seqlens         packed sequences (layout "thd"): (num_seqs + 1,) cumulative lengths; positions restart at 0
//                      at each sequence's start
//   cos, sin           read each rotated column's cos and sin from these tables instead of computing them:
//                      (rows, rotary_dim) or (batch or 1, rows, rotary_dim), row = position (HF's cos and sin)
//   layout             "bhsd" (HF: batch, heads, seq, head_dim), "bshd" (flash-attn: batch, seq, heads, head_dim)
//                      or "thd" (packed: total_tokens, heads, head_dim)
//   transpose          apply the transposed map (the rotation by minus the angle): the backward pass
#define PE_ROTARY_OPTIONS(X)                                         \
  X(const c10::optional<at::Tensor>&, positions, "Tensor?", "None")  \
  X(c10::SymInt, offset, "SymInt", "0")                              \
  X(double, base, "float", "10000.0")                                \
  X(const c10::optional<at::Tensor>&, inv_freq, "Tensor?", "None")   \
  X(c10::optional<int64_t>, rotary_dim, "int?", "None")              \
  X(c10::string_view, style, "str", "\"neox\"")                      \
  X(double, attention_scaling, "float", "1.0")                       \
  X(bool, precise_angle, "bool", "False")                            \
  X(const c10::optional<at::Tensor>&, cu_seqlens, "Tensor?", "None") \
  X(const c10::optional<at::Tensor>&, cos, "Tensor?", "None")        \
  X(const c10::optional<at::Tensor>&, sin, "Tensor?", "None")        \
  X(c10::string_view, layout, "str", "\"bhsd\"")                     \
  X(bool, transpose, "bool", "False")

#define PE_ROTARY_OPTIONS_SCHEMA PE_ROTARY_OPTIONS(PE_OPTION_SCHEMA)
#define PE_ROTARY_OPTIONS_PARAMS PE_ROTARY_OPTIONS(PE_OPTION_PARAM)
#define PE_ROTARY_OPTIONS_ARGS PE_ROTARY_OPTIONS(PE_OPTION_ARG)

// The options of one call, as passed (they refer to the caller's arguments).
struct RotaryOptions {
  PE_ROTARY_OPTIONS(PE_OPTION_FIELD)
};
#define PE_ROTARY_OPTIONS_STRUCT \
  RotaryOptions { PE_ROTARY_OPTIONS(PE_OPTION_INIT) }

// One call, checked and seen as [batch, seq, heads, head_dim] (packed tokens: batch 1): every head of token (b, l) of
// q and of k is rotated by the angles of position(b, l) (math.h), written into q_out and k_out.
struct RotaryProblem {
  at::Tensor q, k;          // [batch, seq, heads, head_dim] and [batch, seq, k_heads, head_dim], any strides; k
                            // undefined when absent
  at::Tensor q_out, k_out;  // like q and k, any non-overlapping strides; q and k themselves in place
  at::Tensor freqs;         // [rotary_dim / 2], the math dtype, contiguous: on the CPU when computed from base
                            // (freqs_from_base), else on q's device; undefined with cos and sin
  at::Tensor cos, sin;      // [batch (stride 0 when shared), rows > every position, rotary_dim], or undefined
  at::Tensor positions;     // int64 [batch, seq] (batch stride 0 when shared), or undefined
  at::Tensor cu_seqlens;    // int64 [num_seqs + 1] (packed tokens), or undefined
  int64_t offset = 0;
  int64_t rotary_dim = 0;
  Style style = Style::kNeox;
  double attention_scaling = 1.0;
  bool freqs_from_base = false;
  bool precise_angle = false;
  bool transpose = false;
  bool in_place = false;

  int64_t batch() const { return q.size(0); }
  int64_t seq_len() const { return q.size(1); }
  int64_t head_dim() const { return q.size(3); }
  int64_t num_pairs() const { return rotary_dim / 2; }
  Positions positions_view() const;
};

// Checks the arguments of rotary / rotary_ (q_out and k_out are q and k for the in-place op, k_out is undefined
// without k) and views them as a RotaryProblem. Every check runs before anything is written.
RotaryProblem prepare_rotary(const at::Tensor& q, const c10::optional<at::Tensor>& k, const RotaryOptions& options,
                             const at::Tensor& q_out, const at::Tensor& k_out, bool in_place);

// Declares the family's ops (csrc/library.cpp calls it inside the one TORCH_LIBRARY block).
void define(torch::Library& m);

// --- The ops, for a backend whose kernel computes one prepared problem.
using ProblemKernel = void (*)(const RotaryProblem&);

// The second output is an empty tensor when k is None (a schema cannot return an optional tensor).
template <ProblemKernel kernel>
std::tuple<at::Tensor, at::Tensor> rotary_op(const at::Tensor& q,
                                             const c10::optional<at::Tensor>& k PE_ROTARY_OPTIONS_PARAMS) {
  const bool has_k = k.has_value() && k->defined();
  at::Tensor q_out = at::empty_like(q);
  at::Tensor k_out = has_k ? at::empty_like(*k) : at::empty({0}, q.options());
  kernel(prepare_rotary(q, k, PE_ROTARY_OPTIONS_STRUCT, q_out, has_k ? k_out : at::Tensor(), false));
  return {q_out, k_out};
}

template <ProblemKernel kernel>
void rotary_inplace_op(const at::Tensor& q, const c10::optional<at::Tensor>& k PE_ROTARY_OPTIONS_PARAMS) {
  kernel(prepare_rotary(q, k, PE_ROTARY_OPTIONS_STRUCT, q, k.has_value() ? *k : at::Tensor(), true));
}

// Registers a backend's kernel for every op of the family under `m` (a TORCH_LIBRARY_IMPL block).
template <ProblemKernel kernel>
void register_kernels(torch::Library& m) {
  m.impl("rotary", &rotary_op<kernel>);
  m.impl("rotary_", &rotary_inplace_op<kernel>);
}

}  // namespace pe_ext::rotary
