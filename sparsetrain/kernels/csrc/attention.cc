// XLA FFI handlers of causal self-attention in float32 on CPU, fused per (batch, head).
//
// Operands, row-major, D = head_dim:
//   q, k, v, o, do  (B, T, H, D): head h of token t of sequence b at ((b*T + t)*H + h)*D
//   qkv, dqkv       (B, T, 3, H, D): the qkv projection's output unsplit; q, k, v of head h of
//                   token t at ((b*T + t)*3 + {0, 1, 2})*H*D + h*D (read and written in place)
//   lse             (B, H, T) log-sum-exp of each query's scaled scores (saved by the forward)
// Handlers:
//   SparsetrainAttentionForward        (q, k, v)        -> o, lse
//   SparsetrainAttentionBackward       (q, k, v, o, lse, do) -> dq, dk, dv
//   SparsetrainAttentionPackedForward  (qkv)            -> o, lse
//   SparsetrainAttentionPackedBackward (qkv, o, lse, do) -> dqkv
// o = softmax(q k^T / sqrt(D) + causal mask) v; the backward recomputes P from lse.
// Attribute `threads` (int64): participants, the caller and tasks on XLA's intra-op thread pool
// (parallel.h); heads are split between them, each thread works on one head at a time in its own
// scratch (for T = 256 all of it, ~0.5 MiB, stays in the core's L2).
//
// Every product is C = A B with A read in place row by row (one broadcast per multiply-add row)
// and B row-major: the register tiles of tiles.h (gather_tile with one block; dq by outer_tile).
// The operand whose reduction axis is D is transposed once per head into scratch, W x W blocks in
// registers (k^T in the forward; q^T and do^T in the backward, zero-padded to Tp = T rounded up
// to the vector width); the right operands read along T (v; do, q, k) are copied contiguous;
// left operands are read where they lie (strided rows of the (packed) arrays). Scratch rows of
// Tp floats lie lt = Tp + W apart (not a power of two: no L1 set conflicts down a column).
// Forward, by blocks of kBlock query rows [i0, i1): S = q_blk k^T over the keys j < i1 (columns
// rounded up to whole vectors), one pass for each row's max and one for exp and sum, o_blk =
// P v[:i1], then o /= l. Backward, by blocks of kBlock key rows [j0, j1) and the queries
// i >= c0 = j0 rounded down to a vector: St = k_blk q^T, dPt = v_blk do^T, one pass for
// Pt = exp(St / sqrt(D) - lse) (0 where i < j) and dSt = Pt (dPt - delta) / sqrt(D) with
// delta_i = do_i . o_i; dv_blk = Pt do, dk_blk = dSt q. dSt of all key blocks stays in scratch
// (T x Tp) and gives dq = dS k at the end, by MR query rows reading the keys j < i1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention_math.h"
#include "parallel.h"
#include "tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using attn::copy_rows;
using attn::gemm_nn;
using attn::gemm_tn;
using attn::lane_index;
using attn::round_up;
using attn::row_dots;
using attn::softmax_row;
using attn::transpose_pad;
using attn::vexp;
using attn::vi;
using attn::vselect;
using bsk::MR;
using bsk::vf;
using bsk::W;

// Rows per block (query rows in the forward, key rows in the backward): a multiple of MR, so that
// the backward's key blocks start at or before every query tile of dq that reads them. A 64-column
// panel of the transposed operand (D = 64: 16 KiB) stays in L1 while the 4 row tiles of a block
// read it; blocks of 4 tiles rather than 8 halve the work spent on the masked triangle of each
// diagonal block (measured on a 2-core Xeon at (8, 256, 8, 64): ~5% less CPU time per call).
constexpr int64_t kBlock = 4 * MR;
// One (sequence, head): pointers at its first token, token strides ld_in (q, k, v and their
// gradients: H*D, or 3*H*D when packed) and ld_out (o, do: H*D).
struct Head {
  int64_t T, D, ld_in, ld_out;
  int64_t Tp() const { return round_up(T, W); }
  // Leading dimension of the scratch rows of Tp floats: one vector more, so that rows 1 KiB
  // apart (T = 256) do not all fall on the same few L1 sets.
  int64_t lt() const { return Tp() + W; }
  float scale() const { return 1.f / std::sqrt(float(D)); }
};

// Scratch of one thread (rows of Tp floats at stride lt): two D x Tp transposed operands, three
// T x D contiguous copies, two kBlock x Tp blocks, T x Tp dSt.
struct Scratch {
  std::vector<float> at, bt, c1, c2, c3, s, u, ds, m, l;
  void fit(const Head& hd, bool backward) {
    const size_t tp = size_t(hd.lt()), dt = size_t(hd.D) * tp, bt_ = size_t(kBlock) * tp;
    if (at.size() < dt) at.resize(dt), bt.resize(dt), c1.resize(dt), c2.resize(dt), c3.resize(dt);
    if (s.size() < bt_) s.resize(bt_), u.resize(bt_);
    if (m.size() < tp) m.resize(tp), l.resize(tp);
    if (backward && ds.size() < size_t(hd.T) * tp) ds.resize(size_t(hd.T) * tp);
  }
};

void forward_head(const float* q, const float* k, const float* v, float* o, float* lse,
                  const Head& hd, Scratch& w) {
  const int64_t T = hd.T, D = hd.D, Tp = hd.Tp(), lt = hd.lt(), ld = hd.ld_in, lo = hd.ld_out;
  const float scale = hd.scale();
  float* kt = w.at.data();
  transpose_pad(k, ld, T, D, kt, lt);
  float* vc = w.c1.data();
  copy_rows(v, ld, T, D, vc);
  float* S = w.s.data();
  for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
    const int64_t i1 = std::min(T, i0 + kBlock), n = std::min(Tp, round_up(i1, W));
    gemm_nn(q + i0 * ld, ld, kt, lt, D, i1 - i0, n, S, lt);
    for (int64_t i = i0; i < i1; ++i) {
      float sum;
      const float m = softmax_row(S + (i - i0) * lt, i + 1, n, scale, &sum);
      w.l[i] = 1.f / sum;
      lse[i] = m * scale + std::log(sum);
    }
    gemm_nn(S, lt, vc, D, i1, i1 - i0, D, o + i0 * lo, lo);
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t d = 0; d < D; ++d) o[i * lo + d] *= w.l[i];
  }
}

// Rows [j0, j1) of Pt and dSt from St and dPt (rows j - j0, columns i in [c0, Tp), stride lt).
void probabilities_t(float* St, const float* dPt, float* dSt, int64_t j0, int64_t j1, int64_t c0,
                     int64_t Tp, int64_t lt, const float* lse, const float* delta, float scale) {
  const vi lanes = lane_index();
  for (int64_t j = j0; j < j1; ++j) {
    float* p = St + (j - j0) * lt;
    const float* dp = dPt + (j - j0) * lt;
    float* ds = dSt + j * lt;
    for (int64_t i = c0; i < Tp; i += W) {
      vf e = vexp(bsk::vload(p + i) * scale - bsk::vload(lse + i));
      e = vselect(lanes + int32_t(i) >= int32_t(j), e, vf{});
      bsk::vstore(p + i, e);
      bsk::vstore(ds + i, e * (bsk::vload(dp + i) - bsk::vload(delta + i)) * scale);
    }
  }
}

void backward_head(const float* q, const float* k, const float* v, const float* o,
                   const float* lse_in, const float* dout, float* dq, float* dk, float* dv,
                   const Head& hd, Scratch& w) {
  const int64_t T = hd.T, D = hd.D, Tp = hd.Tp(), lt = hd.lt(), ld = hd.ld_in, lo = hd.ld_out;
  const float scale = hd.scale();
  float *qt = w.at.data(), *dot = w.bt.data(), *lse = w.m.data(), *delta = w.l.data();
  transpose_pad(q, ld, T, D, qt, lt);
  transpose_pad(dout, lo, T, D, dot, lt);
  float *qc = w.c1.data(), *kc = w.c2.data(), *doc = w.c3.data();
  copy_rows(q, ld, T, D, qc);
  copy_rows(k, ld, T, D, kc);
  copy_rows(dout, lo, T, D, doc);
  row_dots(doc, D, o, lo, T, D, delta);
  for (int64_t i = 0; i < Tp; ++i) lse[i] = i < T ? lse_in[i] : 0.f;
  std::fill(delta + T, delta + Tp, 0.f);  // padded queries: finite values, never read back
  float *St = w.s.data(), *dPt = w.u.data(), *dSt = w.ds.data();
  for (int64_t j0 = 0; j0 < T; j0 += kBlock) {
    const int64_t j1 = std::min(T, j0 + kBlock), c0 = j0 / W * W, R = j1 - j0;
    gemm_nn(k + j0 * ld, ld, qt + c0, lt, D, R, Tp - c0, St + c0, lt);
    gemm_nn(v + j0 * ld, ld, dot + c0, lt, D, R, Tp - c0, dPt + c0, lt);
    probabilities_t(St, dPt, dSt, j0, j1, c0, Tp, lt, lse, delta, scale);
    gemm_nn(St + c0, lt, doc + c0 * D, D, T - c0, R, D, dv + j0 * ld, ld);
    gemm_nn(dSt + j0 * lt + c0, lt, qc + c0 * D, D, T - c0, R, D, dk + j0 * ld, ld);
  }
  // dq[i] = sum over j <= i of dS[i, j] k[j]; the query tile [i0, i1) reads keys j < i1, whose
  // key blocks all started at or before i0 (kBlock is a multiple of MR), so dSt[j, i0:i1] was
  // written (zero where j > i).
  for (int64_t i0 = 0; i0 < T; i0 += MR) {
    const int64_t i1 = std::min(T, i0 + MR);
    gemm_tn(dSt + i0, lt, kc, D, i1, i1 - i0, D, dq + i0 * ld, ld);
  }
}

template <typename A, typename B>
bool same_dims(const A& a, const B& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

int threads_of(int64_t t) { return t < 1 ? 1 : static_cast<int>(t); }

// Where the operands of (sequence b, head h) start. q, k, v (and dq, dk, dv) have token stride
// ld_in; o, do have H*D; lse T per (b, h).
struct Layout {
  int64_t B, T, H, D, ld_in;
  Head head() const { return Head{T, D, ld_in, H * D}; }
  int64_t in(int64_t bh) const { return (bh / H) * T * ld_in + (bh % H) * D; }
  int64_t out(int64_t bh) const { return (bh / H) * T * H * D + (bh % H) * D; }
};

// Runs the forward over all heads; q, k, v at token stride lay.ld_in.
void forward_all(const Layout& lay, const float* q, const float* k, const float* v, float* o,
                 float* lse, int64_t threads, ffi::ThreadPool& pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  const Head hd = lay.head();
  bsk::parallel_ranges(lay.B * lay.H, 1, threads_of(threads), [&](int, int64_t h0, int64_t h1) {
    thread_local Scratch w;
    w.fit(hd, false);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t in = lay.in(bh), out = lay.out(bh);
      forward_head(q + in, k + in, v + in, o + out, lse + bh * lay.T, hd, w);
    }
  }, schedule);
}

void backward_all(const Layout& lay, const float* q, const float* k, const float* v,
                  const float* o, const float* lse, const float* dout, float* dq, float* dk,
                  float* dv, int64_t threads, ffi::ThreadPool& pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  const Head hd = lay.head();
  bsk::parallel_ranges(lay.B * lay.H, 1, threads_of(threads), [&](int, int64_t h0, int64_t h1) {
    thread_local Scratch w;
    w.fit(hd, true);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t in = lay.in(bh), out = lay.out(bh);
      backward_head(q + in, k + in, v + in, o + out, lse + bh * lay.T, dout + out, dq + in,
                    dk + in, dv + in, hd, w);
    }
  }, schedule);
}

ffi::Error unpacked_layout(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                           ffi::Buffer<ffi::F32>& v, Layout* lay) {
  auto qd = q.dimensions();
  if (qd.size() != 4 || !same_dims(k.dimensions(), qd) || !same_dims(v.dimensions(), qd))
    return ffi::Error::InvalidArgument("causal attention: q, k and v must all be (B, T, H, D)");
  *lay = Layout{qd[0], qd[1], qd[2], qd[3], qd[2] * qd[3]};
  return ffi::Error::Success();
}

ffi::Error packed_layout(ffi::Buffer<ffi::F32>& qkv, Layout* lay) {
  auto d = qkv.dimensions();
  if (d.size() != 5 || d[2] != 3)
    return ffi::Error::InvalidArgument("causal attention: qkv must be (B, T, 3, H, D)");
  *lay = Layout{d[0], d[1], d[3], d[4], 3 * d[3] * d[4]};
  return ffi::Error::Success();
}

ffi::Error check_saved(const Layout& lay, ffi::Buffer<ffi::F32>& o, ffi::Buffer<ffi::F32>& lse,
                       ffi::Buffer<ffi::F32>& dout) {
  const int64_t n = lay.B * lay.T * lay.H * lay.D;
  if (o.element_count() != n || dout.element_count() != n ||
      lse.element_count() != lay.B * lay.H * lay.T)
    return ffi::Error::InvalidArgument(
        "causal attention backward: o and do must be (B, T, H, D), lse (B, H, T)");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                       ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse,
                       int64_t threads, ffi::ThreadPool pool) {
  Layout lay;
  if (auto err = unpacked_layout(q, k, v, &lay); err.failure()) return err;
  forward_all(lay, q.typed_data(), k.typed_data(), v.typed_data(), o->typed_data(),
              lse->typed_data(), threads, pool);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                        int64_t threads, ffi::ThreadPool pool) {
  Layout lay;
  if (auto err = unpacked_layout(q, k, v, &lay); err.failure()) return err;
  if (auto err = check_saved(lay, o, lse, dout); err.failure()) return err;
  backward_all(lay, q.typed_data(), k.typed_data(), v.typed_data(), o.typed_data(),
               lse.typed_data(), dout.typed_data(), dq->typed_data(), dk->typed_data(),
               dv->typed_data(), threads, pool);
  return ffi::Error::Success();
}

ffi::Error PackedForwardImpl(ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> o,
                             ffi::ResultBuffer<ffi::F32> lse, int64_t threads,
                             ffi::ThreadPool pool) {
  Layout lay;
  if (auto err = packed_layout(qkv, &lay); err.failure()) return err;
  const float* q = qkv.typed_data();
  const int64_t part = lay.H * lay.D;
  forward_all(lay, q, q + part, q + 2 * part, o->typed_data(), lse->typed_data(), threads, pool);
  return ffi::Error::Success();
}

ffi::Error PackedBackwardImpl(ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> o,
                              ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                              ffi::ResultBuffer<ffi::F32> dqkv, int64_t threads,
                              ffi::ThreadPool pool) {
  Layout lay;
  if (auto err = packed_layout(qkv, &lay); err.failure()) return err;
  if (auto err = check_saved(lay, o, lse, dout); err.failure()) return err;
  const float* q = qkv.typed_data();
  float* dq = dqkv->typed_data();
  const int64_t part = lay.H * lay.D;
  backward_all(lay, q, q + part, q + 2 * part, o.typed_data(), lse.typed_data(),
               dout.typed_data(), dq, dq + part, dq + 2 * part, threads, pool);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAttentionPackedForward, PackedForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAttentionPackedBackward, PackedBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());
