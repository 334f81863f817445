// Host side of a CUDA launch, shared by the real launcher (sinusoidal.cu) and the CPU grid emulator (testing.cpp):
// dtype dispatch, the vector width the tensors' alignment allows, and the launch configuration.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <type_traits>

#include "common/launch_utils.h"
#include "common/philox.h"
#include "common/static_switch.h"
#include "sinusoidal/cuda/kernel.cuh"
#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal::cuda {

template <typename scalar_t, typename table_t, typename pos_t>
AddPeArgs<scalar_t, table_t, pos_t> make_args(const SinusoidalProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  AddPeArgs<scalar_t, table_t, pos_t> a{};
  a.out = p.out.data_ptr<scalar_t>();
  a.out_stride_b = p.out.stride(0);
  a.out_stride_l = p.out.stride(1);
  a.out_stride_d = p.out.stride(2);
  if (p.x.defined()) {
    a.x = p.x.const_data_ptr<scalar_t>();
    a.x_stride_b = p.x.stride(0);
    a.x_stride_l = p.x.stride(1);
    a.x_stride_d = p.x.stride(2);
  }
  if (p.table.defined()) {
    a.table = p.table.const_data_ptr<table_t>();
    a.table_stride_l = p.table.stride(0);
    a.table_stride_d = p.table.stride(1);
  }
  if (p.freqs.defined()) a.freqs = p.freqs.const_data_ptr<double>();
  if (p.positions.defined()) {
    a.positions = p.positions.const_data_ptr<pos_t>();
    a.positions_stride_b = p.positions.stride(0);
    a.positions_stride_l = p.positions.stride(1);
  }
  if (p.alpha.defined()) a.alpha = p.alpha.const_data_ptr<acc_t>();
  a.padding_idx = p.padding_idx;
  a.dropout_threshold = dropout_threshold(p.dropout);
  a.keep_scale = static_cast<acc_t>(1.0 / (1.0 - p.dropout));
  a.seed = p.seed;
  if (p.seed_on_device.defined()) a.seed_on_device = p.seed_on_device.const_data_ptr<int64_t>();
  a.batch = p.batch();
  a.seq_len = p.seq_len();
  a.offset = p.offset;
  a.scale = static_cast<acc_t>(p.scale);
  a.spec = p.spec;
  return a;
}

// Whether every row of out, x and the table can be moved in 16-byte vectors of vec elements, and the layout lets a
// vector of columns share one kind of value (a concatenated span must not cross the sin/cos boundary).
template <typename scalar_t, typename table_t>
bool vectorizable(const SinusoidalProblem& p, int vec) {
  const bool layout_allows_vec = p.spec.layout == Layout::kInterleaved || p.spec.num_freqs % vec == 0;
  return layout_allows_vec && rows_allow_vec<scalar_t>(p.out, vec) &&
         (!p.x.defined() || rows_allow_vec<scalar_t>(p.x, vec)) &&
         (!p.table.defined() || rows_allow_vec<table_t>(p.table, vec));
}

// Calls launch(std::integral_constant<int, kVec>, std::integral_constant<Variant, kVariant>, args, config) with the
// widest vector the data allows and the variant the call needs (Variant).
template <typename Launch>
void dispatch_add_pe(const SinusoidalProblem& p, int num_sms, Launch&& launch) {
  const bool general_case = p.positions.defined() || p.padding_idx >= 0 || p.alpha.defined() || p.dropout > 0;
  const bool fractional = p.positions.defined() && p.positions.scalar_type() == at::kDouble;  // never with a table
  // The module's float32 table under half/bfloat16/double data.
  const bool float_table = p.table.defined() && p.table.scalar_type() != p.out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cuda_add_pe", [&] {
    // table_tag: a null table_t*, which names the table's element type.
    const auto launch_variant = [&](auto variant, auto table_tag) {
      constexpr Variant kVariant = decltype(variant)::value;
      using table_t = std::remove_pointer_t<decltype(table_tag)>;
      const bool vectorized = vectorizable<scalar_t, table_t>(p, kMaxVec<scalar_t>);
      PE_BOOL_SWITCH(vectorized, kVectorized, [&] {
        constexpr int kVec = kVectorized ? kMaxVec<scalar_t> : 1;
        launch(std::integral_constant<int, kVec>{}, variant, make_args<scalar_t, table_t, position_t<kVariant>>(p),
               make_launch_config(p.batch(), p.seq_len(), p.d_model(), kVec, num_sms));
      });
    };
    if (fractional) {
      launch_variant(std::integral_constant<Variant, Variant::kFractional>{}, static_cast<scalar_t*>(nullptr));
      return;
    }
    PE_BOOL_SWITCH(float_table, kFloatTable, [&] {
      using table_t = std::conditional_t<kFloatTable, float, scalar_t>;
      if (general_case) {
        launch_variant(std::integral_constant<Variant, Variant::kGeneral>{}, static_cast<table_t*>(nullptr));
      } else {
        launch_variant(std::integral_constant<Variant, Variant::kPlain>{}, static_cast<table_t*>(nullptr));
      }
    });
  });
}

}  // namespace pe_ext::sinusoidal::cuda
