// XLA FFI handlers of the float32 block-sparse matmul on CPU (called via jax.ffi.ffi_call).
//
// Operands follow sparsetrain/sparsity/layout.py:
//   x      (M, in)            row-major activations, in = nr * bk
//   values (nc, k, bk, bn)    stored blocks; block (j, t) is W[rows[j,t]*bk : +bk, j*bn : +bn]
//   rows   (nc, k) int32      input block-row of each stored block, in [0, nr)
//   dy     (M, out)           out = nc * bn
// Handlers:
//   SparsetrainBsmmForward   y = x @ W                               -> y (M, out)
//   SparsetrainBsmmBackward  dx = dy @ W^T, dvalues = x^T dy at stored blocks
//                                                                    -> dx (M, in), dv like values
// Attribute `threads` (int64): participants (1 = the calling thread only); the others are tasks on
// XLA's intra-op thread pool (parallel.h), so the kernel never oversubscribes XLA's workers.
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Dims {
  int64_t M, in, out, nc, k, bk, bn, nr;
};

ffi::Error check_dims(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& values,
                      ffi::Buffer<ffi::S32>& rows, Dims* d) {
  auto xd = x.dimensions();
  auto vd = values.dimensions();
  auto rd = rows.dimensions();
  if (xd.size() != 2 || vd.size() != 4 || rd.size() != 2)
    return ffi::Error::InvalidArgument("block-sparse matmul: expected x (M, in), values (nc, k, bk, bn), rows (nc, k)");
  *d = Dims{xd[0], xd[1], vd[0] * vd[3], vd[0], vd[1], vd[2], vd[3], 0};
  if (d->bk <= 0 || d->in % d->bk != 0 || rd[0] != d->nc || rd[1] != d->k)
    return ffi::Error::InvalidArgument("block-sparse matmul: x, values and rows shapes disagree");
  d->nr = d->in / d->bk;
  const int32_t* r = rows.typed_data();
  for (int64_t i = 0; i < d->nc * d->k; ++i)
    if (r[i] < 0 || r[i] >= d->nr)
      return ffi::Error::InvalidArgument("block-sparse matmul: row index " + std::to_string(r[i]) +
                                         " outside [0, " + std::to_string(d->nr) + ")");
  return ffi::Error::Success();
}

int threads_of(int64_t t) { return t < 1 ? 1 : static_cast<int>(t); }

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                       ffi::Buffer<ffi::S32> rows, ffi::ResultBuffer<ffi::F32> y, int64_t threads,
                       ffi::ThreadPool pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  Dims d;
  if (auto err = check_dims(x, values, rows, &d); err.failure()) return err;
  auto yd = y->dimensions();
  if (yd.size() != 2 || yd[0] != d.M || yd[1] != d.out)
    return ffi::Error::InvalidArgument("block-sparse matmul forward: y must be (M, nc * bn)");
  // Output block-column j: its k stored blocks, reading x's columns of their input block-rows.
  const int64_t nb = d.nc * d.k;
  bsk::BlockList list;
  list.ptr.resize(d.nc + 1);
  list.a_blk.resize(nb);
  list.b_off.resize(nb);
  const int32_t* r = rows.typed_data();
  for (int64_t j = 0; j <= d.nc; ++j) list.ptr[j] = j * d.k;
  for (int64_t e = 0; e < nb; ++e) {
    list.a_blk[e] = r[e];
    list.b_off[e] = e * d.bk * d.bn;
  }
  bsk::sparse_product(x.typed_data(), d.in, d.M, values.typed_data(), int(d.bk), int(d.bn), list,
                      y->typed_data(), d.out, threads_of(threads), schedule);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                        ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dvalues,
                        int64_t threads, ffi::ThreadPool pool) {
  const bsk::Schedule schedule = [&pool](std::function<void()> f) { pool.Schedule(std::move(f)); };
  Dims d;
  if (auto err = check_dims(x, values, rows, &d); err.failure()) return err;
  auto dyd = dy.dimensions();
  if (dyd.size() != 2 || dyd[0] != d.M || dyd[1] != d.out)
    return ffi::Error::InvalidArgument("block-sparse matmul backward: dy must be (M, nc * bn)");
  const int t = threads_of(threads);
  const int64_t nb = d.nc * d.k;
  const int32_t* r = rows.typed_data();

  // Per input block-row i, its stored blocks (counting sort by row); W's blocks transposed for dx.
  thread_local std::vector<float> vt;
  if (vt.size() < size_t(values.element_count())) vt.resize(values.element_count());  // grown only
  bsk::transpose_blocks(values.typed_data(), nb, int(d.bk), int(d.bn), vt.data(), t, schedule);
  bsk::RowBlocks by_row;
  by_row.ptr.assign(d.nr + 1, 0);
  for (int64_t e = 0; e < nb; ++e) ++by_row.ptr[r[e] + 1];
  for (int64_t i = 0; i < d.nr; ++i) by_row.ptr[i + 1] += by_row.ptr[i];
  by_row.col.resize(nb);
  by_row.blk.resize(nb);
  std::vector<int64_t> fill(by_row.ptr.begin(), by_row.ptr.end() - 1);
  for (int64_t e = 0; e < nb; ++e) {
    const int64_t s = fill[r[e]]++;
    by_row.col[s] = e / d.k;  // the block's output block-column
    by_row.blk[s] = e;
  }
  bsk::sparse_backward(x.typed_data(), d.in, dy.typed_data(), d.out, d.M, d.nc, vt.data(), by_row,
                       nb, int(d.bk), int(d.bn), dx->typed_data(), d.in, dvalues->typed_data(), t,
                       schedule);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainBsmmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparsetrainBsmmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads")
                                  .Ctx<ffi::ThreadPool>());
