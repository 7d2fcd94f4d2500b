// Vectorised float32 math on tiles.h's vf (W lanes per vector, any instruction set).
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "tiles.h"

namespace bsk {

// 1 / x for finite x != 0: the hardware's reciprocal estimate and one Newton step (error ~ the
// estimate's squared: a few ulp); a division where there is no estimate. Estimate error: < 2^-14
// (VRCP14PS), < 1.5 * 2^-12 (VRCPPS) (Intel Intrinsics Guide, _mm512_rcp14_ps / _mm256_rcp_ps).
// Skylake-X: VDIVPS zmm reciprocal throughput 10 cycles against 2 for VRCP14PS zmm (Agner Fog,
// "Instruction tables", Skylake-X section).
inline vf vrcp(vf x) {
#if defined(__AVX512F__)
  const vf r = (vf)_mm512_rcp14_ps((__m512)x);
#elif defined(__AVX__)
  const vf r = (vf)_mm256_rcp_ps((__m256)x);
#else
  return 1.f / x;
#endif
#if defined(__AVX512F__) || defined(__AVX__)
  return r * (2.f - x * r);
#endif
}

// Lane-wise max(a, b) and min(a, b) (one instruction where the instruction set has it).
inline vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return a > b ? a : b;
#endif
}
inline vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
  return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
  return (vf)_mm256_min_ps((__m256)a, (__m256)b);
#else
  return a < b ? a : b;
#endif
}

// tanh(x): Eigen's float rational approximation (generic_fast_tanh_float: odd numerator of
// degree 13 over even denominator of degree 6, on x clamped to +-7.90531110763549805; absolute
// error < 4e-7, measured against float64 tanh), and exactly +-1 beyond the clamp (where
// 1 - |tanh| < 2.8e-7), so that 1 - t^2 and 1 + t vanish in the saturated tails.
inline vf vtanh(vf x) {
  const vf c = vsplat(7.90531110763549805f);
  const vf xc = vmin(vmax(x, -c), c), x2 = xc * xc;
  vf p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  vf q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  vf t = xc * p * vrcp(q);
  t = x >= c ? vsplat(1.f) : t;
  return x <= -c ? vsplat(-1.f) : t;
}

inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// The first n < W floats of p in a vector (the other lanes 0), and the way back.
inline vf vload_n(const float* p, int64_t n) {
  vf v{};
  __builtin_memcpy(&v, p, size_t(n) * sizeof(float));
  return v;
}
inline void vstore_n(float* p, vf v, int64_t n) { __builtin_memcpy(p, &v, size_t(n) * sizeof(float)); }

}  // namespace bsk
