// Host side of a CUDA launch, shared by the real launcher (sinusoidal.cu) and the CPU grid emulator (testing.cpp):
// which kernel a call needs (dtype, table, variant, angle, vector width) and its arguments. The launch configuration
// comes from make_launch_config (kernel.cuh), given the kernel's occupancy.
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

template <typename K>
AddPeArgs<K> make_args(const SinusoidalProblem& p) {
  using scalar_t = typename K::scalar_t;
  using acc_t = typename K::acc_t;
  AddPeArgs<K> a{};
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
  if constexpr (K::kFromTable) {
    a.table = p.table.const_data_ptr<typename K::table_t>();
    a.table_rows = p.table_rows();
    a.table_stride_l = p.table_stride_l();
    a.table_stride_d = p.table_stride_d();
  } else if constexpr (std::is_same_v<typename K::freq_t, float>) {
    a.freqs = p.float_freqs.const_data_ptr<float>();
  } else {
    a.freqs = p.freqs.const_data_ptr<double>();
  }
  if (p.positions.defined()) {
    a.positions = p.positions.const_data_ptr<typename K::pos_t>();
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

// Calls f(std::integral_constant<Variant, ...>) with the variant the call needs. Fractional positions never come with
// a table (the checks refuse them), so table kernels are built without that variant.
template <bool kFromTable, typename F>
void with_variant(const SinusoidalProblem& p, F&& f) {
  const bool fractional = p.positions.defined() && p.positions.scalar_type() == at::kDouble;
  const bool general_case = p.positions.defined() || p.padding_idx >= 0 || p.alpha.defined() || p.dropout > 0;
  if constexpr (!kFromTable) {
    if (fractional) return f(std::integral_constant<Variant, Variant::kFractional>{});
  }
  if (general_case) return f(std::integral_constant<Variant, Variant::kGeneral>{});
  f(std::integral_constant<Variant, Variant::kPlain>{});
}

// Calls launch(K{}, make_args<K>(p)) with K the KernelSpec the call needs for its scalar_t: its pe source (a table of
// scalar_t or float32, or the angle, plain or precise), its variant and the widest vector the data allows.
template <typename scalar_t, typename Launch>
void dispatch_add_pe_kernel(const SinusoidalProblem& p, Launch& launch) {
  // table_tag: a null table_t*, which names the table's element type.
  const auto launch_kernel = [&](auto variant, auto source, auto table_tag) {
    using table_t = std::remove_pointer_t<decltype(table_tag)>;
    const bool vectorized = vectorizable<scalar_t, table_t>(p, kMaxVec<scalar_t>);
    PE_BOOL_SWITCH(vectorized, kVectorized, [&] {
      constexpr int kVec = kVectorized ? kMaxVec<scalar_t> : 1;
      using K = KernelSpec<kVec, decltype(variant)::value, decltype(source)::value, scalar_t, table_t>;
      launch(K{}, make_args<K>(p));
    });
  };
  if (p.table.defined()) {
    // The module's float32 table under half/bfloat16/double data.
    PE_BOOL_SWITCH(p.table.scalar_type() != p.out.scalar_type(), kFloatTable, [&] {
      using table_t = std::conditional_t<kFloatTable, float, scalar_t>;
      with_variant<true>(p, [&](auto variant) {
        launch_kernel(variant, std::integral_constant<PeSource, PeSource::kTable>{}, static_cast<table_t*>(nullptr));
      });
    });
    return;
  }
  const auto computed = [&](auto source) {
    with_variant<false>(p, [&](auto variant) { launch_kernel(variant, source, static_cast<scalar_t*>(nullptr)); });
  };
  if constexpr (std::is_same_v<at::opmath_type<scalar_t>, double>) {
    computed(std::integral_constant<PeSource, PeSource::kComputed>{});  // float64 math is precise already
  } else if (p.spec.precise_angle) {
    computed(std::integral_constant<PeSource, PeSource::kComputedPrecise>{});
  } else {
    computed(std::integral_constant<PeSource, PeSource::kComputed>{});
  }
}

template <typename Launch>
void dispatch_add_pe(const SinusoidalProblem& p, Launch&& launch) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.out.scalar_type(), "pe_ext_cuda_add_pe",
                                  [&] { dispatch_add_pe_kernel<scalar_t>(p, launch); });
}

}  // namespace pe_ext::sinusoidal::cuda
