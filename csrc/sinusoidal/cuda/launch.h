// Host side of a CUDA launch, shared by the real launcher (pe_cuda.cu) and the CPU grid emulator: dtype dispatch,
// the vector width the tensors' alignment allows, and the launch configuration.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "sinusoidal/ops.h"
#include "sinusoidal/cuda/kernel.cuh"

namespace pe_ext::cuda_kernel {

template <typename T>
struct TypeTag {
  using type = T;
};

// Whether every `vec`-wide chunk of every row of t (viewed [.., rows, d_model]) starts on a vec * sizeof(T)
// boundary, so it can be moved in one access. Strides of size-1 dimensions never move the pointer.
template <typename T>
bool rows_allow_vec(const at::Tensor& t, int vec) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  if (address % (static_cast<std::uintptr_t>(vec) * sizeof(T)) != 0) return false;
  if (t.size(-1) > 1 && t.stride(-1) != 1) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  }
  return true;
}

template <typename scalar_t, typename table_t>
AddPeArgs<scalar_t, table_t> make_args(const AddPeProblem& p) {
  AddPeArgs<scalar_t, table_t> a{};
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
  if (p.positions.defined()) {
    a.positions = p.positions.const_data_ptr<int64_t>();
    a.positions_stride_b = p.positions.stride(0);
    a.positions_stride_l = p.positions.stride(1);
  }
  if (p.alpha.defined()) a.alpha = p.alpha.const_data_ptr<acc_type<scalar_t>>();
  a.padding_idx = p.padding_idx;
  a.dropout_threshold = dropout_threshold(p.dropout);
  a.keep_scale = static_cast<acc_type<scalar_t>>(1.0 / (1.0 - p.dropout));
  a.seed = p.seed;
  a.batch = p.batch();
  a.seq_len = p.seq_len();
  a.offset = p.offset;
  a.scale = static_cast<acc_type<scalar_t>>(p.scale);
  a.spec = p.spec;
  return a;
}

// Calls launch(std::integral_constant<int, VEC>, std::bool_constant<kExtras>, args, config) with the widest vector
// the data allows, and kExtras only when the call uses positions, padding_idx, alpha or dropout.
template <typename Launch>
void dispatch_add_pe(const AddPeProblem& p, int num_sms, Launch&& launch) {
  const bool extras = p.positions.defined() || p.padding_idx >= 0 || p.alpha.defined() || p.dropout > 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cuda_add_pe", [&] {
    auto run = [&](auto table_tag, auto vec_tag, auto extras_tag) {
      using table_t = typename decltype(table_tag)::type;
      constexpr int kVec = decltype(vec_tag)::value;
      launch(vec_tag, extras_tag, make_args<scalar_t, table_t>(p),
             make_launch_config(p.batch(), p.seq_len(), p.d_model(), kVec, num_sms));
    };
    auto with_vec = [&](auto table_tag, auto extras_tag) {
      using table_t = typename decltype(table_tag)::type;
      constexpr int kVec = kMaxVec<scalar_t>;
      // A concatenated span must not cross the sin/cos boundary: chunks of kVec columns align with it.
      const bool layout_allows_vec = p.spec.layout == Layout::kInterleaved || p.spec.num_freqs % kVec == 0;
      const bool vectorizable = layout_allows_vec && rows_allow_vec<scalar_t>(p.out, kVec) &&
                                (!p.x.defined() || rows_allow_vec<scalar_t>(p.x, kVec)) &&
                                (!p.table.defined() || rows_allow_vec<table_t>(p.table, kVec));
      if (vectorizable) {
        run(table_tag, std::integral_constant<int, kVec>{}, extras_tag);
      } else {
        run(table_tag, std::integral_constant<int, 1>{}, extras_tag);
      }
    };
    auto with_extras = [&](auto table_tag) {
      if (extras) {
        with_vec(table_tag, std::true_type{});
      } else {
        with_vec(table_tag, std::false_type{});
      }
    };
    if (p.table.defined() && p.table.scalar_type() != p.out.scalar_type()) {
      with_extras(TypeTag<float>{});  // the module's float32 table under half/bfloat16/double data
    } else {
      with_extras(TypeTag<scalar_t>{});
    }
  });
}

}  // namespace pe_ext::cuda_kernel
