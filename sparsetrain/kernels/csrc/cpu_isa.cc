// Which instruction set a library was compiled for, and which ones this CPU runs.
//
// Every csrc/*.cc is compiled once per instruction set into its own library (setup.py);
// sparsetrain/kernels/ffi.py asks the generic library (baseline target flags, loadable on any
// CPU) which of them the CPU supports, then loads the best one.
#include <cstring>

// Instruction set the tiles of this library were compiled for ("avx512", "avx2+fma", ...).
extern "C" const char* sparsetrain_bsmm_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__ARM_NEON)
  return "generic (neon)";
#elif defined(__SSE2__)
  return "generic (sse2)";
#else
  return "generic (scalar)";
#endif
}

// 1 when this CPU (and its OS, which must save the wide registers) runs library `isa`
// ("avx512", "avx2" or "generic"; the same features setup.py's flags enable), else 0.
extern "C" int sparsetrain_cpu_supports(const char* isa) {
  if (std::strcmp(isa, "generic") == 0) return 1;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx2") == 0) return avx2;
  if (std::strcmp(isa, "avx512") == 0)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
  return 0;
}
