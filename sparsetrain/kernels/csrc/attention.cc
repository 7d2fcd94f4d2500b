// XLA FFI handlers of causal self-attention in float32 on CPU, fused per (batch, head).
//
// Operands in the model's layout (sparsetrain/models/attention.py):
//   q, k, v, o, do  (B, T, H, D) row-major: head h of token t of sequence b at ((b*T + t)*H + h)*D
//   lse             (B, H, T)    log-sum-exp of each query's scaled scores (saved by the forward)
// Handlers:
//   SparsetrainAttentionForward   o = softmax(q k^T / sqrt(D) + causal mask) v   -> o, lse
//   SparsetrainAttentionBackward  dq, dk, dv of o for cotangent do (P recomputed from lse)
// Attribute `threads` (int64): participants, the caller and tasks on XLA's intra-op thread pool
// (parallel.h); heads are split between them, each thread works
// on one head at a time in its own scratch (T x T scores stay in L2 for T = 256).
//
// Per head every product is a D = P^T Q product of the register tiles of tiles.h (outer_tile),
// restricted to the causal triangle by row blocks: block [i0, i1) of queries only reads keys
// j < i1. Forward: S = (q / sqrt(D)) k^T, P = softmax rows, o = P v. Backward:
// dv = P^T do, dP = do v^T, dS = P (dP - rowsum(do o)) / sqrt(D), dk = dS^T q, dq = dS k.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bsk::MAXNV;
using bsk::MR;
using bsk::vf;
using bsk::W;

constexpr int64_t kRowBlock = 8 * MR;  // query rows per causal block

// D[r, c] = sum over k < K of P[k * ldp + r] * Q[k * ldq + c], for r < R and c < N (overwrites).
void gemm_tn(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t K, int64_t R,
             int64_t N, float* D, int64_t ldd) {
  const int64_t n_vec = N - N % W;
  for (int64_t r0 = 0; r0 < R; r0 += MR) {
    const int r = static_cast<int>(std::min<int64_t>(MR, R - r0));
    for (int64_t c0 = 0; c0 < n_vec;) {
      const int nv = static_cast<int>(std::min<int64_t>(MAXNV, (n_vec - c0) / W));
      bsk::outer_fn(r, nv)(P + r0, ldp, Q + c0, ldq, K, D + r0 * ldd + c0, ldd, false, 1);
      c0 += nv * W;
    }
    for (int64_t c = n_vec; c < N; ++c)
      for (int64_t i = r0; i < r0 + r; ++i) {
        float s = 0.f;
        for (int64_t k = 0; k < K; ++k) s += P[k * ldp + i] * Q[k * ldq + c];
        D[i * ldd + c] = s;
      }
  }
}

typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

// exp(x) for x in [-87, 88] (clamped), Cephes expf polynomial; relative error ~2e-7.
inline vf vexp(vf x) {
  const vf lo = bsk::vsplat(-87.f), hi = bsk::vsplat(88.f);
  vi below = x < lo, above = x > hi;
  x = (vf)(((vi)lo & below) | ((vi)x & ~below));
  x = (vf)(((vi)hi & above) | ((vi)x & ~above));
  vf fx = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(fx, vi);  // truncates toward zero: fix up to floor
  vf nf = __builtin_convertvector(n, vf);
  vi too_big = nf > fx;
  n = n + too_big;  // true lanes are -1
  nf = __builtin_convertvector(n, vf);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf y = x * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.f;
  vi pow2n = (n + 127) << 23;
  return y * (vf)pow2n;
}

inline vf vmax(vf a, vf b) {
  vi gt = a > b;
  return (vf)(((vi)a & gt) | ((vi)b & ~gt));
}

// row[j] = exp(row[j] - sub) for j < n; returns their sum.
float exp_row(float* row, int64_t n, float sub) {
  const int64_t n_vec = n - n % W;
  vf acc{};
  const vf s = bsk::vsplat(sub);
  for (int64_t j = 0; j < n_vec; j += W) {
    vf e = vexp(bsk::vload(row + j) - s);
    bsk::vstore(row + j, e);
    acc += e;
  }
  float total = 0.f;
  for (int i = 0; i < W; ++i) total += acc[i];
  for (int64_t j = n_vec; j < n; ++j) total += (row[j] = std::exp(row[j] - sub));
  return total;
}

// For i in [i0, n): m[i] = max(m[i], row[i]).
void max_into(const float* row, int64_t i0, int64_t n, float* m) {
  int64_t i = i0;
  for (; i + W <= n; i += W) bsk::vstore(m + i, vmax(bsk::vload(m + i), bsk::vload(row + i)));
  for (; i < n; ++i) m[i] = std::max(m[i], row[i]);
}

// For i in [i0, n): row[i] = exp(row[i] - m[i]), l[i] += row[i].
void exp_into(float* row, int64_t i0, int64_t n, const float* m, float* l) {
  int64_t i = i0;
  for (; i + W <= n; i += W) {
    vf e = vexp(bsk::vload(row + i) - bsk::vload(m + i));
    bsk::vstore(row + i, e);
    bsk::vstore(l + i, bsk::vload(l + i) + e);
  }
  for (; i < n; ++i) l[i] += (row[i] = std::exp(row[i] - m[i]));
}

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols, in 16 x 16 tiles.
void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  for (int64_t i0 = 0; i0 < rows; i0 += 16)
    for (int64_t j0 = 0; j0 < cols; j0 += 16)
      for (int64_t i = i0; i < std::min(rows, i0 + 16); ++i)
        for (int64_t j = j0; j < std::min(cols, j0 + 16); ++j) dst[j * ldd + i] = src[i * lds + j];
}

struct Shape {
  int64_t B, T, H, D;
  int64_t ld() const { return H * D; }                                 // between tokens
  int64_t head(int64_t bh) const { return (bh / H) * T * H * D + (bh % H) * D; }  // offset
};

// Scratch of one thread: transposed operands (D x T) and three T x T matrices.
struct Scratch {
  std::vector<float> at, bt, s, p, u, m, l;
  void fit(const Shape& sh) {
    const size_t dt = size_t(sh.D * sh.T), tt = size_t(sh.T * sh.T);
    if (at.size() < dt) at.resize(dt), bt.resize(dt);
    if (m.size() < size_t(sh.T)) m.resize(sh.T), l.resize(sh.T);
    if (s.size() < tt) s.resize(tt), p.resize(tt), u.resize(tt);
  }
};

// s (T x T) rows i: scores (q_i / sqrt(D)) . k_j for j <= i (row block granularity above it).
void scores(const float* q, const float* k, const Shape& sh, Scratch& w) {
  const int64_t T = sh.T, D = sh.D, ld = sh.ld();
  const float scale = 1.f / std::sqrt(float(D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      w.at[d * T + t] = q[t * ld + d] * scale;
      w.bt[d * T + t] = k[t * ld + d];
    }
  for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
    const int64_t i1 = std::min(T, i0 + kRowBlock);
    gemm_tn(w.at.data() + i0, T, w.bt.data(), T, D, i1 - i0, i1, w.s.data() + i0 * T, T);
  }
}

// Forward on the transposed scores St[j, i] = k_j . q_i / sqrt(D) (rows = keys): the softmax runs
// down columns, vectorized across queries, and St is then directly the left operand of o = P v.
void forward_head(const float* q, const float* k, const float* v, float* o, float* lse,
                  const Shape& sh, Scratch& w) {
  const int64_t T = sh.T, D = sh.D, ld = sh.ld();
  const float scale = 1.f / std::sqrt(float(D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      w.at[d * T + t] = q[t * ld + d] * scale;
      w.bt[d * T + t] = k[t * ld + d];
    }
  float* St = w.s.data();
  for (int64_t j0 = 0; j0 < T; j0 += kRowBlock) {  // key rows [j0, j1): queries i >= j0
    const int64_t j1 = std::min(T, j0 + kRowBlock);
    gemm_tn(w.bt.data() + j0, T, w.at.data() + j0, T, D, j1 - j0, T - j0, St + j0 * T + j0, T);
  }
  float* m = w.m.data();
  float* l = w.l.data();
  std::fill(m, m + T, -INFINITY);
  std::fill(l, l + T, 0.f);
  for (int64_t j = 0; j < T; ++j) max_into(St + j * T, j, T, m);
  for (int64_t j = 0; j < T; ++j) {
    float* row = St + j * T;
    std::fill(row, row + j, 0.f);  // queries before key j do not see it
    exp_into(row, j, T, m, l);
  }
  for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {  // o[i] = sum over keys j < i1 of P[i, j] v[j]
    const int64_t i1 = std::min(T, i0 + kRowBlock);
    gemm_tn(St + i0, T, v, ld, i1, i1 - i0, D, o + i0 * ld, ld);
  }
  for (int64_t i = 0; i < T; ++i) {  // normalise: o[i] /= l[i]
    const float inv = 1.f / l[i];
    for (int64_t d = 0; d < D; ++d) o[i * ld + d] *= inv;
    lse[i] = m[i] + std::log(l[i]);
  }
}

void backward_head(const float* q, const float* k, const float* v, const float* o,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv,
                   const Shape& sh, Scratch& w) {
  const int64_t T = sh.T, D = sh.D, ld = sh.ld();
  const float scale = 1.f / std::sqrt(float(D));
  scores(q, k, sh, w);
  float* P = w.s.data();
  for (int64_t i = 0; i < T; ++i) {  // P recomputed from the saved log-sum-exp
    float* row = P + i * T;
    exp_row(row, i + 1, lse[i]);
    std::fill(row + i + 1, row + T, 0.f);
  }
  for (int64_t j0 = 0; j0 < T; j0 += kRowBlock) {  // dv[j] = sum over i >= j of P[i, j] do[i]
    const int64_t j1 = std::min(T, j0 + kRowBlock);
    gemm_tn(P + j0 * T + j0, T, dout + j0 * ld, ld, T - j0, j1 - j0, D, dv + j0 * ld, ld);
  }
  // dP = do v^T on the causal blocks (at/bt now hold do^T and v^T).
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      w.at[d * T + t] = dout[t * ld + d];
      w.bt[d * T + t] = v[t * ld + d];
    }
  float* dP = w.u.data();
  for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {
    const int64_t i1 = std::min(T, i0 + kRowBlock);
    gemm_tn(w.at.data() + i0, T, w.bt.data(), T, D, i1 - i0, i1, dP + i0 * T, T);
  }
  float* dS = P;  // overwrite P in place: dS = P (dP - delta) / sqrt(D), zero above the diagonal
  for (int64_t i = 0; i < T; ++i) {
    float delta = 0.f;
    for (int64_t d = 0; d < D; ++d) delta += dout[i * ld + d] * o[i * ld + d];
    float* row = dS + i * T;
    const float* dp = dP + i * T;
    for (int64_t j = 0; j <= i; ++j) row[j] = row[j] * (dp[j] - delta) * scale;
  }
  for (int64_t j0 = 0; j0 < T; j0 += kRowBlock) {  // dk[j] = sum over i >= j of dS[i, j] q[i]
    const int64_t j1 = std::min(T, j0 + kRowBlock);
    gemm_tn(dS + j0 * T + j0, T, q + j0 * ld, ld, T - j0, j1 - j0, D, dk + j0 * ld, ld);
  }
  // dSt = dS^T where dq reads it: rows j below the end of each query row block.
  float* dSt = w.p.data();
  for (int64_t i0 = 0; i0 < T; i0 += 16) {
    const int64_t end = std::min(T, (i0 / kRowBlock + 1) * kRowBlock);
    transpose(dS + i0 * T, T, std::min<int64_t>(16, T - i0), end, dSt + i0, T);
  }
  for (int64_t i0 = 0; i0 < T; i0 += kRowBlock) {  // dq[i] = sum over j < i1 of dS[i, j] k[j]
    const int64_t i1 = std::min(T, i0 + kRowBlock);
    gemm_tn(dSt + i0, T, k, ld, i1, i1 - i0, D, dq + i0 * ld, ld);
  }
}

template <typename A, typename B>
bool same_dims(const A& a, const B& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

ffi::Error shape_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v,
                    Shape* sh) {
  auto qd = q.dimensions();
  if (qd.size() != 4 || !same_dims(k.dimensions(), qd) || !same_dims(v.dimensions(), qd))
    return ffi::Error::InvalidArgument("causal attention: q, k and v must all be (B, T, H, D)");
  *sh = Shape{qd[0], qd[1], qd[2], qd[3]};
  return ffi::Error::Success();
}

int threads_of(int64_t t) { return t < 1 ? 1 : static_cast<int>(t); }

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                       ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse,
                       int64_t threads, ffi::ThreadPool pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  Shape sh;
  if (auto err = shape_of(q, k, v, &sh); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  bsk::parallel_ranges(sh.B * sh.H, 1, threads_of(threads), [&](int, int64_t h0, int64_t h1) {
    thread_local Scratch w;
    w.fit(sh);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t off = sh.head(bh);
      forward_head(qp + off, kp + off, vp + off, op + off, lp + bh * sh.T, sh, w);
    }
  }, schedule);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                        int64_t threads, ffi::ThreadPool pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  Shape sh;
  if (auto err = shape_of(q, k, v, &sh); err.failure()) return err;
  if (!same_dims(o.dimensions(), q.dimensions()) || !same_dims(dout.dimensions(), q.dimensions()) ||
      lse.element_count() != sh.B * sh.H * sh.T)
    return ffi::Error::InvalidArgument("causal attention backward: o and do must be (B, T, H, D), lse (B, H, T)");
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = o.typed_data(), *lp = lse.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  bsk::parallel_ranges(sh.B * sh.H, 1, threads_of(threads), [&](int, int64_t h0, int64_t h1) {
    thread_local Scratch w;
    w.fit(sh);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t off = sh.head(bh);
      backward_head(qp + off, kp + off, vp + off, op + off, lp + bh * sh.T, gp + off, dqp + off,
                    dkp + off, dvp + off, sh, w);
    }
  }, schedule);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAttentionForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAttentionBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());
