#pragma once
// What the CPU and CUDA kernels share at the level of single instructions: the __host__ __device__
// qualifier and the bit operations (popcount, count trailing/leading zeros) with the hardware
// instruction on the device and a portable form on the host. Header-only, no ATen: the per-thread
// logic in common/*.h builds on these, so that the CPU kernels run the same code as the device.
#include <cstdint>

#if defined(__CUDACC__)
#define LITESAM_HD __host__ __device__ __forceinline__
#else
#define LITESAM_HD inline
#endif

namespace litesam {

// Without a popcnt target flag (-mpopcnt, -march=...), GCC turns __builtin_popcount into a libgcc call
// per word; the inline SWAR form is faster there and lets the compiler vectorise the row loops.
LITESAM_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#elif defined(__POPCNT__) || defined(__ARM_NEON)
  return __builtin_popcount(x);
#else
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  return static_cast<int>((((x + (x >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
#endif
}

LITESAM_HD int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return popcount32(static_cast<uint32_t>(x)) + popcount32(static_cast<uint32_t>(x >> 32));
#endif
}

// Index of the lowest set bit; 64 for 0.
LITESAM_HD int count_trailing_zeros64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return x == 0 ? 64 : __ffsll(static_cast<long long>(x)) - 1;
#else
  return x == 0 ? 64 : __builtin_ctzll(x);
#endif
}

// Index of the highest set bit of a non-zero word.
LITESAM_HD int highest_bit32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(static_cast<int>(x));
#else
  return 31 - __builtin_clz(x);
#endif
}

// Bits [0, count) of a 64-bit word, count in [0, 64].
LITESAM_HD uint64_t low_bits64(int count) { return count >= 64 ? ~0ull : (1ull << count) - 1ull; }

// Bits [0, count) of a 32-bit word, count in [0, 32] (negative counts give 0).
LITESAM_HD uint32_t low_bits32(int count) {
  return count >= 32 ? 0xFFFFFFFFu : (count <= 0 ? 0u : (1u << count) - 1u);
}

}  // namespace litesam
