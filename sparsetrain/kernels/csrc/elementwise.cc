// XLA FFI handlers of the GPT's element-wise passes in float32 on CPU: LayerNorm over the last
// axis (optionally after the residual add before it) and bias + tanh-GELU, forward and backward.
//
// Operands, row-major: x, a, s, y, dy, ds (N, d); scale, bias, ab (d,); mean, rstd (N,); for
// the GELU u, g, du (N, n) and b (n,).
// Handlers:
//   SparsetrainLayerNormForward      y = (x - mean) * rstd * scale + bias     -> y, mean, rstd
//   SparsetrainAddLayerNormForward   s = x + a + ab (ab: a's bias), LayerNorm of s -> s, y, mean, rstd
//   SparsetrainLayerNormBackward     dx, dscale, dbias for cotangent dy      (x, mean, rstd saved)
//   SparsetrainAddLayerNormBackward  the same with dx += ds (the cotangent of the output s), and
//                                    dab = sum of dx rows (= da summed: a's bias gradient)
//   SparsetrainBiasGeluForward       gelu(u + b), tanh approximation          -> (N, n)
//   SparsetrainBiasGeluBackward      du = g * gelu'(u + b) (tanh recomputed), dbias = sum of du rows
// mean and var (mean squared deviation) are two passes over a row that stays in L1;
// rstd = 1 / sqrt(var + eps). Attributes: `threads` (participants: the caller and tasks on XLA's
// intra-op thread pool, parallel.h), `eps` (float32, LayerNorm only).
// Column sums (dscale, dbias) use no atomics and do not depend on the thread count or schedule:
// each chunk of kChunkRows rows adds into its own row of partial sums, then the chunks' rows are
// added in chunk order (the same float result on every run).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "tiles.h"
#include "vmath.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bsk::vf;
using bsk::vload;
using bsk::vsplat;
using bsk::vstore;
using bsk::W;

constexpr int64_t kChunkRows = 64;              // rows per row of partial column sums
constexpr float kGeluC = 0.7978845608028654f;   // sqrt(2 / pi), jax.nn.gelu(approximate=True)
constexpr float kGeluA = 0.044715f;

int threads_of(int64_t t) { return t < 1 ? 1 : static_cast<int>(t); }

// ---------------------------------------------------------------------------------- LayerNorm

// y = LayerNorm of one row x (d,); *mean_out, *rstd_out its statistics.
void norm_row(const float* x, const float* scale, const float* bias, float eps, int64_t d,
              float* y, float* mean_out, float* rstd_out) {
  const int64_t dv = d - d % W;
  vf acc{};
  for (int64_t j = 0; j < dv; j += W) acc += vload(x + j);
  float sum = bsk::hsum(acc);
  for (int64_t j = dv; j < d; ++j) sum += x[j];
  const float mean = sum / float(d);
  const vf m = vsplat(mean);
  acc = vf{};
  for (int64_t j = 0; j < dv; j += W) {
    const vf t = vload(x + j) - m;
    acc += t * t;
  }
  float sq = bsk::hsum(acc);
  for (int64_t j = dv; j < d; ++j) sq += (x[j] - mean) * (x[j] - mean);
  const float rstd = 1.f / std::sqrt(sq / float(d) + eps);
  const vf r = vsplat(rstd);
  for (int64_t j = 0; j < dv; j += W)
    vstore(y + j, (vload(x + j) - m) * r * vload(scale + j) + vload(bias + j));
  for (int64_t j = dv; j < d; ++j) y[j] = (x[j] - mean) * rstd * scale[j] + bias[j];
  *mean_out = mean;
  *rstd_out = rstd;
}

// dx (d,) of one row for cotangent dy, plus ds when not null; adds dy * xhat to dscale, dy to
// dbias and (when not null) dx to dsum (this chunk's partial sums). xhat = (x - mean) * rstd, dxhat = dy * scale:
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
void norm_back_row(const float* x, float mean, float rstd, const float* scale, const float* dy,
                   const float* ds, int64_t d, float* dx, float* dscale, float* dbias,
                   float* dsum) {
  const int64_t dv = d - d % W;
  const vf m = vsplat(mean), r = vsplat(rstd);
  vf sa{}, sb{};
  for (int64_t j = 0; j < dv; j += W) {
    const vf xh = (vload(x + j) - m) * r, g = vload(dy + j), gh = g * vload(scale + j);
    sa += gh;
    sb += gh * xh;
    vstore(dscale + j, vload(dscale + j) + g * xh);
    vstore(dbias + j, vload(dbias + j) + g);
  }
  float a = bsk::hsum(sa), b = bsk::hsum(sb);
  for (int64_t j = dv; j < d; ++j) {
    const float xh = (x[j] - mean) * rstd, gh = dy[j] * scale[j];
    a += gh;
    b += gh * xh;
    dscale[j] += dy[j] * xh;
    dbias[j] += dy[j];
  }
  a /= float(d);
  b /= float(d);
  const vf ca = vsplat(a), cb = vsplat(b);
  for (int64_t j = 0; j < dv; j += W) {
    const vf xh = (vload(x + j) - m) * r;
    vf out = r * (vload(dy + j) * vload(scale + j) - ca - xh * cb);
    if (ds) out += vload(ds + j);
    vstore(dx + j, out);
    if (dsum) vstore(dsum + j, vload(dsum + j) + out);
  }
  for (int64_t j = dv; j < d; ++j) {
    const float xh = (x[j] - mean) * rstd;
    dx[j] = rstd * (dy[j] * scale[j] - a - xh * b) + (ds ? ds[j] : 0.f);
    if (dsum) dsum[j] += dx[j];
  }
}

// Runs row_fn(i, partial) for every row i < rows, in parallel; partial points to the
// n_sums * cols partial column sums of i's chunk (zeroed first). Then sums[k][j] = the sum over
// chunks (in order) of their partial[k * cols + j].
template <typename RowFn>
void rows_with_column_sums(int64_t rows, int64_t cols, int n_sums, float* const* sums, int threads,
                           const bsk::Schedule& schedule, RowFn row_fn) {
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows, width = n_sums * cols;
  std::vector<float> partial(size_t(chunks * width), 0.f);
  bsk::parallel_ranges(chunks, 1, threads, [&](int, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = c * kChunkRows; i < std::min(rows, (c + 1) * kChunkRows); ++i)
        row_fn(i, partial.data() + c * width);
  }, schedule);
  for (int k = 0; k < n_sums; ++k) {
    float* out = sums[k];
    std::fill(out, out + cols, 0.f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* p = partial.data() + c * width + k * cols;
      for (int64_t j = 0; j < cols; ++j) out[j] += p[j];
    }
  }
}

// ---------------------------------------------------------------------------------- tanh-GELU

// gelu(u) = 0.5 u (1 + t), t = tanh(z), z = c (u + a u^3) (bsk::vtanh: a rational function,
// cheaper than exp and a reciprocal, which bounded this pass: it is compute-bound, not
// memory-bound, on 2 AVX-512 cores). Slope: 0.5 (1 + t) + 0.5 u (1 - t^2) c (1 + 3 a u^2).
inline vf gelu(vf u) {
  const vf h = 0.5f * u;
  return h + h * bsk::vtanh(u * (kGeluC + (kGeluC * kGeluA) * (u * u)));
}
inline vf gelu_slope(vf u) {
  const vf u2 = u * u, t = bsk::vtanh(u * (kGeluC + (kGeluC * kGeluA) * u2));
  return (0.5f + 0.5f * t) + (0.5f * u) * (1.f - t * t) * (kGeluC + (3.f * kGeluC * kGeluA) * u2);
}

void gelu_row(const float* u, const float* b, int64_t n, float* out) {
  int64_t j = 0;
  for (; j + W <= n; j += W) vstore(out + j, gelu(vload(u + j) + vload(b + j)));
  if (j < n) bsk::vstore_n(out + j, gelu(bsk::vload_n(u + j, n - j) + bsk::vload_n(b + j, n - j)), n - j);
}

// du (n,) = g * gelu'(u + b) of one row; adds du to db (this chunk's partial sums).
void gelu_back_row(const float* u, const float* b, const float* g, int64_t n, float* du, float* db) {
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf d = vload(g + j) * gelu_slope(vload(u + j) + vload(b + j));
    vstore(du + j, d);
    vstore(db + j, vload(db + j) + d);
  }
  if (j < n) {
    const int64_t r = n - j;
    const vf d = bsk::vload_n(g + j, r) * gelu_slope(bsk::vload_n(u + j, r) + bsk::vload_n(b + j, r));
    bsk::vstore_n(du + j, d, r);
    bsk::vstore_n(db + j, bsk::vload_n(db + j, r) + d, r);
  }
}

// ---------------------------------------------------------------------------------- handlers

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

bsk::Schedule schedule_on(ffi::ThreadPool& pool) {
  return [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
}

// (rows, cols) of a 2-D x whose vectors (d,) and row statistics (N,) have matching sizes.
ffi::Error rows_cols(const F32& x, std::initializer_list<int64_t> per_col,
                     std::initializer_list<int64_t> per_row, int64_t* rows, int64_t* cols) {
  auto xd = x.dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("element-wise kernel: x must be (N, d)");
  *rows = xd[0];
  *cols = xd[1];
  for (int64_t c : per_col)
    if (c != *cols) return ffi::Error::InvalidArgument("element-wise kernel: a (d,) operand's size is not d");
  for (int64_t r : per_row)
    if (r != *rows) return ffi::Error::InvalidArgument("element-wise kernel: a (N,) operand's size is not N");
  return ffi::Error::Success();
}

ffi::Error NormForward(F32 x, const F32* a, const F32* ab, F32 scale, F32 bias, F32Out* s, F32Out y,
                       F32Out mean, F32Out rstd, float eps, int64_t threads, ffi::ThreadPool& pool) {
  int64_t N, d;
  if (auto err = rows_cols(x, {scale.element_count(), bias.element_count()},
                           {mean->element_count(), rstd->element_count()}, &N, &d);
      err.failure())
    return err;
  if (a && (a->element_count() != N * d || ab->element_count() != d))
    return ffi::Error::InvalidArgument("add + LayerNorm: a must have x's shape, its bias (d,)");
  const float *xp = x.typed_data(), *ap = a ? a->typed_data() : nullptr;
  const float* abp = a ? ab->typed_data() : nullptr;
  float* sp = s ? (*s)->typed_data() : nullptr;
  bsk::parallel_ranges(N, 1, threads_of(threads), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = xp + i * d;
      if (ap) {  // s = x + a + ab, then normalise s while its row is in L1
        float* srow = sp + i * d;
        const float* arow = ap + i * d;
        int64_t j = 0;
        for (; j + W <= d; j += W)
          vstore(srow + j, vload(row + j) + (vload(arow + j) + vload(abp + j)));
        for (; j < d; ++j) srow[j] = row[j] + (arow[j] + abp[j]);
        row = srow;
      }
      norm_row(row, scale.typed_data(), bias.typed_data(), eps, d, y->typed_data() + i * d,
               mean->typed_data() + i, rstd->typed_data() + i);
    }
  }, schedule_on(pool));
  return ffi::Error::Success();
}

ffi::Error NormBackward(F32 x, F32 mean, F32 rstd, F32 scale, F32 dy, const F32* ds, F32Out dx,
                        F32Out dscale, F32Out dbias, F32Out* dab, int64_t threads,
                        ffi::ThreadPool& pool) {
  int64_t N, d;
  if (auto err = rows_cols(x, {scale.element_count(), dscale->element_count(), dbias->element_count()},
                           {mean.element_count(), rstd.element_count()}, &N, &d);
      err.failure())
    return err;
  if (dy.element_count() != N * d || (ds && ds->element_count() != N * d) ||
      (dab && (*dab)->element_count() != d))
    return ffi::Error::InvalidArgument("LayerNorm backward: dy (and ds) must be (N, d) like x");
  float* sums[3] = {dscale->typed_data(), dbias->typed_data(), dab ? (*dab)->typed_data() : nullptr};
  const float* dsp = ds ? ds->typed_data() : nullptr;
  rows_with_column_sums(N, d, dab ? 3 : 2, sums, threads_of(threads), schedule_on(pool),
                        [&](int64_t i, float* partial) {
    norm_back_row(x.typed_data() + i * d, mean.typed_data()[i], rstd.typed_data()[i],
                  scale.typed_data(), dy.typed_data() + i * d, dsp ? dsp + i * d : nullptr, d,
                  dx->typed_data() + i * d, partial, partial + d, dab ? partial + 2 * d : nullptr);
  });
  return ffi::Error::Success();
}

ffi::Error LayerNormForwardImpl(F32 x, F32 scale, F32 bias, F32Out y, F32Out mean, F32Out rstd,
                                float eps, int64_t threads, ffi::ThreadPool pool) {
  return NormForward(x, nullptr, nullptr, scale, bias, nullptr, y, mean, rstd, eps, threads, pool);
}

ffi::Error AddLayerNormForwardImpl(F32 x, F32 a, F32 ab, F32 scale, F32 bias, F32Out s, F32Out y,
                                   F32Out mean, F32Out rstd, float eps, int64_t threads,
                                   ffi::ThreadPool pool) {
  return NormForward(x, &a, &ab, scale, bias, &s, y, mean, rstd, eps, threads, pool);
}

ffi::Error LayerNormBackwardImpl(F32 x, F32 mean, F32 rstd, F32 scale, F32 dy, F32Out dx,
                                 F32Out dscale, F32Out dbias, int64_t threads, ffi::ThreadPool pool) {
  return NormBackward(x, mean, rstd, scale, dy, nullptr, dx, dscale, dbias, nullptr, threads, pool);
}

ffi::Error AddLayerNormBackwardImpl(F32 x, F32 mean, F32 rstd, F32 scale, F32 dy, F32 ds,
                                    F32Out dx, F32Out dscale, F32Out dbias, F32Out dab,
                                    int64_t threads, ffi::ThreadPool pool) {
  return NormBackward(x, mean, rstd, scale, dy, &ds, dx, dscale, dbias, &dab, threads, pool);
}

ffi::Error BiasGeluForwardImpl(F32 u, F32 b, F32Out out, int64_t threads, ffi::ThreadPool pool) {
  int64_t N, n;
  if (auto err = rows_cols(u, {b.element_count()}, {}, &N, &n); err.failure()) return err;
  bsk::parallel_ranges(N, 1, threads_of(threads), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      gelu_row(u.typed_data() + i * n, b.typed_data(), n, out->typed_data() + i * n);
  }, schedule_on(pool));
  return ffi::Error::Success();
}

ffi::Error BiasGeluBackwardImpl(F32 u, F32 b, F32 g, F32Out du, F32Out db, int64_t threads,
                                ffi::ThreadPool pool) {
  int64_t N, n;
  if (auto err = rows_cols(u, {b.element_count(), db->element_count()}, {}, &N, &n); err.failure())
    return err;
  if (g.element_count() != N * n)
    return ffi::Error::InvalidArgument("bias-GELU backward: g must be (N, n) like u");
  float* sums[1] = {db->typed_data()};
  rows_with_column_sums(N, n, 1, sums, threads_of(threads), schedule_on(pool),
                        [&](int64_t i, float* partial) {
    gelu_back_row(u.typed_data() + i * n, b.typed_data(), g.typed_data() + i * n, n,
                  du->typed_data() + i * n, partial);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainLayerNormForward, LayerNormForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAddLayerNormForward, AddLayerNormForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainLayerNormBackward, LayerNormBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainAddLayerNormBackward, AddLayerNormBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainBiasGeluForward, BiasGeluForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainBiasGeluBackward, BiasGeluBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());
