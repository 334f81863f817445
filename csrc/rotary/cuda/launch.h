// Host side of a CUDA launch, shared by the real launcher (rotary.cu) and the CPU grid emulator (testing.cpp): dtype
// dispatch, the vector width the tensors' alignment allows, and the launch configuration.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <type_traits>

#include "common/launch_utils.h"
#include "common/static_switch.h"
#include "rotary/cuda/kernel.cuh"
#include "rotary/ops.h"

namespace pe_ext::rotary::cuda {

template <typename scalar_t>
RotaryOperand<scalar_t> make_operand(const at::Tensor& x, const at::Tensor& out) {
  RotaryOperand<scalar_t> o{};
  if (!x.defined()) return o;  // k absent: no heads
  o.x = x.const_data_ptr<scalar_t>();
  o.out = out.data_ptr<scalar_t>();
  o.x_stride_b = x.stride(0);
  o.x_stride_l = x.stride(1);
  o.x_stride_h = x.stride(2);
  o.x_stride_d = x.stride(3);
  o.out_stride_b = out.stride(0);
  o.out_stride_l = out.stride(1);
  o.out_stride_h = out.stride(2);
  o.out_stride_d = out.stride(3);
  o.heads = x.size(2);
  return o;
}

// `device_freqs` receives the frequencies' device copy when they are too many to travel inline; the caller keeps it
// alive until the launch is queued.
template <typename scalar_t, typename table_t>
RotaryArgs<scalar_t, table_t> make_args(const RotaryProblem& p, at::Tensor& device_freqs) {
  using acc_t = at::opmath_type<scalar_t>;
  RotaryArgs<scalar_t, table_t> a{};
  a.operands[0] = make_operand<scalar_t>(p.q, p.q_out);
  a.operands[1] = make_operand<scalar_t>(p.k, p.k_out);
  a.batch = p.batch();
  a.seq_len = p.seq_len();
  a.head_dim = p.head_dim();
  a.rotary_dim = p.rotary_dim;
  a.num_pairs = p.num_pairs();
  a.positions = p.positions_view();
  if (p.freqs_from_base && p.num_pairs() <= kMaxInlineFreqs) {  // computed on the host: inline
    std::copy_n(p.freqs.const_data_ptr<acc_t>(), p.num_pairs(), a.inline_freqs);
  } else if (p.freqs.defined()) {
    device_freqs = p.freqs.to(p.q.device());  // no copy for inv_freq, already there
    a.freqs = device_freqs.const_data_ptr<acc_t>();
  }
  if (p.cos.defined()) {
    a.cos = p.cos.const_data_ptr<table_t>();
    a.sin = p.sin.const_data_ptr<table_t>();
    a.cos_stride_b = p.cos.stride(0);
    a.cos_stride_r = p.cos.stride(1);
    a.cos_stride_d = p.cos.stride(2);
    a.sin_stride_b = p.sin.stride(0);
    a.sin_stride_r = p.sin.stride(1);
    a.sin_stride_d = p.sin.stride(2);
  }
  a.cos_scaling = static_cast<acc_t>(p.attention_scaling);
  a.sin_scaling = p.transpose ? -a.cos_scaling : a.cos_scaling;
  a.precise_angle = p.precise_angle;
  a.transpose = p.transpose;
  a.in_place = p.in_place;
  return a;
}

// Whether every unit can move its columns in 16-byte vectors of vec elements: whole units of pairs (neox: each half a
// multiple of vec; gptj: rotary_dim a multiple of vec), every row of q, k, their outputs and the tables aligned with
// unit column strides, pass-through columns starting on a vector boundary.
template <typename scalar_t, typename table_t>
bool vectorizable(const RotaryProblem& p, int vec) {
  const bool neox = p.style == Style::kNeox;
  if ((neox ? p.num_pairs() : p.rotary_dim) % vec != 0) return false;
  if (!p.in_place && p.rotary_dim < p.head_dim() && p.rotary_dim % vec != 0) return false;
  for (const at::Tensor* t : {&p.q, &p.q_out, &p.k, &p.k_out}) {
    if (t->defined() && !rows_allow_vec<scalar_t>(*t, vec)) return false;
  }
  // A unit's table values: neox, vec of each half; gptj, the vec / 2 pairs' vec columns.
  return !p.cos.defined() || (rows_allow_vec<table_t>(p.cos, vec) && rows_allow_vec<table_t>(p.sin, vec));
}

// The problem with its tables in the dtype the kernel reads them in: q's dtype (Hugging Face's cos and sin) or q's
// math dtype, into which tables of any other dtype are converted first (exactly, or rounded as the CPU kernel rounds
// them when it reads them).
template <typename table_t>
RotaryProblem with_table_dtype(const RotaryProblem& p) {
  constexpr at::ScalarType kTableType = c10::CppTypeToScalarType<table_t>::value;
  RotaryProblem converted = p;
  if (p.cos.defined() && p.cos.scalar_type() != kTableType) {
    converted.cos = p.cos.to(kTableType);
    converted.sin = p.sin.to(kTableType);
  }
  return converted;
}

// Calls launch(std::integral_constant<int, kVec>, std::bool_constant<kTables>, std::integral_constant<Style, kStyle>,
// args, config) with the widest vector the data allows.
template <typename Launch>
void dispatch_rotary(const RotaryProblem& p, int num_sms, Launch&& launch) {
  const bool tables = p.cos.defined();
  const bool same_dtype_tables = tables && p.cos.scalar_type() == p.q.scalar_type();
  const int64_t total_heads = p.q.size(2) + (p.k.defined() ? p.k.size(2) : 0);
  const int64_t passthrough = p.in_place ? 0 : p.head_dim() - p.rotary_dim;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "pe_ext_cuda_rotary", [&] {
    PE_BOOL_SWITCH(tables, kTables, [&] {
      PE_BOOL_SWITCH(same_dtype_tables, kSameDtypeTables, [&] {
        using table_t = std::conditional_t<kTables && !kSameDtypeTables, at::opmath_type<scalar_t>, scalar_t>;
        const RotaryProblem converted = with_table_dtype<table_t>(p);
        const bool vectorized = vectorizable<scalar_t, table_t>(converted, kMaxVec<scalar_t>);
        PE_BOOL_SWITCH(vectorized, kVectorized, [&] {
          constexpr int kVec = kVectorized ? kMaxVec<scalar_t> : 1;
          PE_BOOL_SWITCH(p.style == Style::kGptj, kGptj, [&] {
            constexpr Style kStyle = kGptj ? Style::kGptj : Style::kNeox;
            at::Tensor device_freqs;
            launch(std::integral_constant<int, kVec>{}, std::bool_constant<kTables>{},
                   std::integral_constant<Style, kStyle>{}, make_args<scalar_t, table_t>(converted, device_freqs),
                   make_launch_config(p.batch() * p.seq_len(), total_heads, p.num_pairs(), passthrough, kStyle, kVec,
                                      num_sms));
          });
        });
      });
    });
  });
}

}  // namespace pe_ext::rotary::cuda
