// Marks the functions every backend shares: compiled for the GPU by nvcc, and inlined into the CPU kernels (whose
// per-ISA clones must inline them to vectorize them) and the grid emulator by the host compiler.
#pragma once

#if defined(__CUDACC__)
#define PE_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define PE_HOST_DEVICE inline __attribute__((always_inline))
#else
#define PE_HOST_DEVICE inline
#endif

// Unroll hints for nvcc; the host compiler would warn about an unknown pragma.
#if defined(__CUDACC__)
#define PE_UNROLL _Pragma("unroll")
#else
#define PE_UNROLL
#endif
