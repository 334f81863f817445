// Argument checks every op family shares. Each throws the exception type Python users expect (ValueError via
// TORCH_CHECK_VALUE, TypeError via TORCH_CHECK_TYPE) with a message that names the argument, the value and a remedy.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace pe_ext {

// float32, float64, float16 or bfloat16: the dtypes every kernel computes.
bool is_supported_dtype(at::ScalarType t);
void check_supported_dtype(const at::Tensor& t, const char* name);

// Whether t's elements provably lie at distinct addresses, so that it can be written.
bool has_distinct_elements(const at::Tensor& t);
void check_distinct_elements(const at::Tensor& t, const char* name);

// Refuses a write target whose memory overlaps a tensor the op still reads.
void check_no_shared_memory(const at::Tensor& written, const char* name, const at::Tensor& read, const char* read_name);

// offset >= 0 and offset + count fits in int64.
void check_offset(int64_t offset, int64_t count);
// offset + count fits in int64; offset may be negative (positions computed on the fly).
void check_offset_fits(int64_t offset, int64_t count);

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name);

// Whether the host may read t's values now: always for CPU tensors; for CUDA tensors unless the current stream of their
// device is capturing a CUDA graph (a device-to-host copy fails there, and the graph would replay what it read once).
bool values_readable(const at::Tensor& t);

}  // namespace pe_ext
