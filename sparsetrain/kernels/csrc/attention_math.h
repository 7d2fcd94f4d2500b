// Float32 building blocks of the causal-attention kernel (attention.cc): products of one head's
// operands on the register tiles of tiles.h, a vectorized exp, the row softmax, transposes.
// Row-major everywhere: element (i, c) of a matrix with leading dimension ld is p[i * ld + c].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tiles.h"

namespace attn {

using bsk::MAXNV;
using bsk::MR;
using bsk::vf;
using bsk::W;

inline constexpr int64_t kZeroOffset[1] = {0};

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// C[r, c] = sum over k < K of A[r * lda + k] * B[k * ldb + c], for r < R and c < N (overwrites).
// Column panels of MAXNV vectors outermost: each panel of B is read by all row tiles in turn.
inline void gemm_nn(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, int64_t R,
             int64_t N, float* C, int64_t ldc) {
  const int64_t n_vec = N - N % W;
  for (int64_t c0 = 0; c0 < n_vec;) {
    const int nv = static_cast<int>(std::min<int64_t>(MAXNV, (n_vec - c0) / W));
    for (int64_t r0 = 0; r0 < R; r0 += MR) {
      const int r = static_cast<int>(std::min<int64_t>(MR, R - r0));
      bsk::gather_fn(r, nv)(A + r0 * lda, lda, kZeroOffset, B + c0, kZeroOffset, 1,
                            static_cast<int>(K), ldb, C + r0 * ldc + c0, ldc, 1);
    }
    c0 += nv * W;
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = n_vec; c < N; ++c) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += A[r * lda + k] * B[k * ldb + c];
      C[r * ldc + c] = s;
    }
}

// D[r, c] = sum over m < M of P[m * ldp + r] * Q[m * ldq + c], for r < R <= MR and c < N.
inline void gemm_tn(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t M, int64_t R,
             int64_t N, float* D, int64_t ldd) {
  const int64_t n_vec = N - N % W;
  const int r = static_cast<int>(R);
  for (int64_t c0 = 0; c0 < n_vec;) {
    const int nv = static_cast<int>(std::min<int64_t>(MAXNV, (n_vec - c0) / W));
    bsk::outer_fn(r, nv)(P, ldp, Q + c0, ldq, M, D + c0, ldd, false, 1);
    c0 += nv * W;
  }
  for (int64_t c = n_vec; c < N; ++c)
    for (int64_t i = 0; i < R; ++i) {
      float s = 0.f;
      for (int64_t m = 0; m < M; ++m) s += P[m * ldp + i] * Q[m * ldq + c];
      D[i * ldd + c] = s;
    }
}

typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

// exp(x) for x <= 0 (as every exponent here is: scores minus their row's maximum or log-sum-exp),
// clamped below at -87 (exp = 1.6e-38 instead of a denormal or 0): x = n ln2 + f with n the
// nearest integer (|f| <= ln2 / 2), e^f by the Cephes expf polynomial, 2^n built in the exponent
// bits. Relative error ~2e-7.
inline vf vexp(vf x) {
  x = vselect(x < -87.f, bsk::vsplat(-87.f), x);
  const vf shifter = bsk::vsplat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf nf = (x * 1.44269504088896341f + shifter) - shifter;
  const vi n = __builtin_convertvector(nf, vi);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf y = x * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.f;
  return y * (vf)((n + 127) << 23);
}

// Lane offsets 0, 1, ..., W-1 as a vector (for the causal mask).
inline vi lane_index() {
  vi v;
  for (int i = 0; i < W; ++i) v[i] = i;
  return v;
}

// Softmax numerator of one score row: m = max(row[0:n]), row[j] = exp((row[j] - m) * scale)
// for j < n and 0 for n <= j < end (end a multiple of W). Returns m; *sum = sum of row[0:n].
inline float softmax_row(float* row, int64_t n, int64_t end, float scale, float* sum) {
  const int64_t n_vec = n - n % W;
  vf mv = bsk::vsplat(-INFINITY);
  for (int64_t j = 0; j < n_vec; j += W) {
    const vf x = bsk::vload(row + j);
    mv = vselect(x > mv, x, mv);
  }
  float m = -INFINITY;
  for (int i = 0; i < W; ++i) m = std::max(m, mv[i]);
  for (int64_t j = n_vec; j < n; ++j) m = std::max(m, row[j]);
  const vf ms = bsk::vsplat(m * scale);
  const vi lanes = lane_index();
  vf acc{};
  for (int64_t j = 0; j < end; j += W) {
    vf e = vexp(bsk::vload(row + j) * scale - ms);
    e = vselect(lanes + int32_t(j) < int32_t(n), e, vf{});
    bsk::vstore(row + j, e);
    acc += e;
  }
  float total = 0.f;
  for (int i = 0; i < W; ++i) total += acc[i];
  *sum = total;
  return m;
}

// out[t] = sum over d < D of a[t * lda + d] * b[t * ldb + d] for t < T (vectors along d, one
// horizontal sum per row: no serial chain of D scalar multiply-adds).
inline void row_dots(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t T,
                     int64_t D, float* out) {
  const int64_t d_vec = D - D % W;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = a + t * lda;
    const float* y = b + t * ldb;
    vf acc{};
    for (int64_t d = 0; d < d_vec; d += W) acc += bsk::vload(x + d) * bsk::vload(y + d);
    float s = 0.f;
    for (int i = 0; i < W; ++i) s += acc[i];
    for (int64_t d = d_vec; d < D; ++d) s += x[d] * y[d];
    out[t] = s;
  }
}

// Swaps the off-diagonal H x H blocks of every 2H x 2H block of the W x W matrix whose rows
// r[i] and r[i + H] are (i & H == 0): one stage of an in-register transpose (two-source shuffles,
// one vpermt2ps each on AVX-512).
template <int H>
inline void swap_stage(vf* r) {
  vi lo, hi;
  for (int c = 0; c < W; ++c) {
    lo[c] = (c & H) ? W + c - H : c;
    hi[c] = (c & H) ? W + c : c + H;
  }
  for (int i = 0; i < W; ++i)
    if (!(i & H)) {
      const vf a = r[i], b = r[i + H];
      r[i] = __builtin_shuffle(a, b, lo);
      r[i + H] = __builtin_shuffle(a, b, hi);
    }
}

// The W x W block at src (row stride lds) transposed into dst (row stride ldd).
inline void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
  vf r[W];
  for (int i = 0; i < W; ++i) r[i] = bsk::vload(src + i * lds);
  if constexpr (W >= 16) swap_stage<8>(r);
  if constexpr (W >= 8) swap_stage<4>(r);
  swap_stage<2>(r);
  swap_stage<1>(r);
  for (int i = 0; i < W; ++i) bsk::vstore(dst + i * ldd, r[i]);
}

// dst[d * ldd + t] = src[t * lds + d] for t < rows, d < cols; dst[d * ldd + t] = 0 for
// rows <= t < ldd (the padding). Whole W x W blocks in registers, the edges element by element.
inline void transpose_pad(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                   int64_t ldd) {
  const int64_t rows_w = rows - rows % W, cols_w = cols - cols % W;
  for (int64_t t0 = 0; t0 < rows_w; t0 += W)
    for (int64_t d0 = 0; d0 < cols_w; d0 += W)
      transpose_block(src + t0 * lds + d0, lds, dst + d0 * ldd + t0, ldd);
  for (int64_t d = 0; d < cols; ++d) {
    const int64_t t_start = d < cols_w ? rows_w : 0;
    for (int64_t t = t_start; t < rows; ++t) dst[d * ldd + t] = src[t * lds + d];
    std::fill(dst + d * ldd + rows, dst + (d + 1) * ldd, 0.f);
  }
}

// dst[t * D + d] = src[t * lds + d] for t < T, d < D: one head's rows made contiguous, so that the
// products that stream them as their right operand find them in L1 (rows of the (packed) arrays
// lie H*D or 3*H*D floats apart, which maps them onto a few L1 sets).
inline void copy_rows(const float* src, int64_t lds, int64_t T, int64_t D, float* dst) {
  for (int64_t t = 0; t < T; ++t) std::copy(src + t * lds, src + t * lds + D, dst + t * D);
}

}  // namespace attn
