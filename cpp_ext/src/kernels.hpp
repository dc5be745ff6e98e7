// Internal: portable SIMD-friendly loops. On x86-64 Linux the hot kernels are also compiled for AVX2 and picked at
// load time (function multi-versioning), so the shipped build stays baseline-portable (no -march=native).
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define OMNIAD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OMNIAD_CLONES
#endif
