// Register-tiled float32 microkernels for block-sparse products (no XLA dependency).
//
// Vectors are GCC/Clang vector extensions of W floats, so the same source compiles to AVX-512
// (W=16), AVX2/AVX (W=8) or 128-bit SIMD (W=4, SSE/NEON) by the compiler's target flags; a
// tile is R rows x NV vectors of accumulators kept in registers (R*NV <= MAX_ACC).
// Row-major everywhere: element (i, c) of a matrix with leading dimension ld is p[i * ld + c].
#pragma once

#include <cstdint>

namespace bsk {

#if defined(__AVX512F__)
constexpr int W = 16;     // floats per vector
constexpr int MAXNV = 4;  // vectors per tile row (64 columns)
constexpr int MR = 6;     // rows per tile: 24 accumulators of 32 registers
#elif defined(__AVX__)
constexpr int W = 8;
constexpr int MAXNV = 2;
constexpr int MR = 6;  // 12 accumulators of 16 registers
#else
constexpr int W = 4;
constexpr int MAXNV = 2;
constexpr int MR = 4;
#endif

typedef float vf __attribute__((vector_size(W * sizeof(float))));

inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline vf vsplat(float s) { return s - vf{}; }  // s - 0 folds to a broadcast; 0 + s would not (-0)

// C[0:R, 0:NV*W] = sum over e < n of A[0:R, a_off[e] : +kb] @ B_e (kb, NV*W), where A is
// row-major with leading dimension lda (read in place: each step broadcasts one float of each of
// the R rows) and B_e = b_base + b_off[e] is row-major with leading dimension ldb; then the same
// for the next NV*W columns of B and C, `passes` times in all (one call per row tile: the call
// and its set-up cost once per tile, and the tile's rows of A stay in L1 across the passes).
// The accumulators stay in registers across all n blocks: C is written once.
template <int R, int NV>
void gather_tile(const float* A, int64_t lda, const int64_t* a_off, const float* b_base,
                 const int64_t* b_off, int n, int kb, int64_t ldb, float* C, int64_t ldc,
                 int passes) {
  for (int p = 0; p < passes; ++p, b_base += NV * W, C += NV * W) {
    // C's lines requested for writing now, so that their read-for-ownership overlaps the FMAs
    // instead of stalling the stores at the end (with one stored block per column a tile does
    // only kb steps per C line).
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV * W; c += 64 / int(sizeof(float))) __builtin_prefetch(C + r * ldc + c, 1);
    vf acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
    for (int e = 0; e < n; ++e) {
      // Pointers advanced per step (not a[kk + r * lda]): the loop body is loads and FMAs only.
      const float* a = A + a_off[e];
      const float* b = b_base + b_off[e];
      const float* const a_end = a + kb;
#pragma GCC unroll 2
      for (; a != a_end; ++a, b += ldb) {
        vf bv[NV];
        for (int v = 0; v < NV; ++v) bv[v] = vload(b + v * W);
        for (int r = 0; r < R; ++r) {
          const vf av = vsplat(a[r * lda]);
          for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * W, acc[r][v]);
  }
}

// D[0:R, 0:NV*W] (+)= sum over m < M of P[m, 0:R]^T-row-broadcast x Q[m, 0:NV*W], i.e.
// D += P^T @ Q for P (M, R) with leading dimension ldp and Q (M, NV*W) with ldq; then the same
// for the next NV*W columns of Q and D, `passes` times in all. accumulate=false starts from zero.
template <int R, int NV>
void outer_tile(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t M, float* D,
                int64_t ldd, bool accumulate, int passes) {
  for (int pass = 0; pass < passes; ++pass, Q += NV * W, D += NV * W) {
    vf acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? vload(D + r * ldd + v * W) : vf{};
    const float* p = P;
    const float* q = Q;
    for (int64_t m = 0; m < M; ++m, p += ldp, q += ldq) {
      vf qv[NV];
      for (int v = 0; v < NV; ++v) qv[v] = vload(q + v * W);
      for (int r = 0; r < R; ++r) {
        const vf pv = vsplat(p[r]);
        for (int v = 0; v < NV; ++v) acc[r][v] += pv * qv[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) vstore(D + r * ldd + v * W, acc[r][v]);
  }
}

// Tile for a remainder chosen at run time: 1 <= r <= MR rows, 1 <= nv <= MAXNV vectors.
using GatherFn = void (*)(const float*, int64_t, const int64_t*, const float*, const int64_t*,
                          int, int, int64_t, float*, int64_t, int);
using OuterFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                         bool, int);
GatherFn gather_fn(int r, int nv);
OuterFn outer_fn(int r, int nv);

}  // namespace bsk
