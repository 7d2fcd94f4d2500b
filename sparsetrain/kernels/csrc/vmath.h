// Vectorised float32 math on tiles.h's vf (W lanes per vector, any instruction set).
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "tiles.h"

namespace bsk {

typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

// exp(x) for x in [-87, 88] (clamped), Cephes expf polynomial; relative error ~2e-7.
// n = round(x / ln 2) by the shifter trick (adding 1.5 * 2^23 leaves the rounded integer in the
// low mantissa bits): no float-int conversions; r = x - n ln 2 in [-ln2 / 2, ln2 / 2], the
// polynomial's range.
inline vf vexp(vf x) {
  const vf lo = vsplat(-87.f), hi = vsplat(88.f), shifter = vsplat(12582912.f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf fx = x * 1.44269504088896341f + shifter;
  const vi n = (vi)fx - (vi)shifter;
  const vf nf = fx - shifter;
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf y = x * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.f;
  return y * (vf)((n + 127) << 23);
}

// 1 / x for finite x != 0: the hardware's reciprocal estimate (relative error < 2^-14 with
// AVX-512's rcp14, < 1.5 * 2^-12 with AVX's rcp) and one Newton step (error ~ its square, a few
// ulp); a division where there is no estimate. A vector division costs ~10x the estimate's
// throughput on AVX-512 cores and bounds an exp-and-reciprocal pass like a sigmoid.
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
