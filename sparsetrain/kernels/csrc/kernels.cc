// Drivers of the block-sparse products: cache blocking, remainders and threads (see kernels.h).
#include "kernels.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "parallel.h"
#include "tiles.h"

namespace bsk {

namespace {

// Rows of A per chunk in sparse_product: the chunk of A (rows x all input columns) stays in L2
// (1 MiB: half of Sapphire Rapids' 2 MiB per core,
// https://en.wikichip.org/wiki/intel/microarchitectures/sapphire_rapids; all of Zen 4's) while
// every output block-column reads it; but at least kMinChunkRows, because every chunk streams all
// stored blocks of B once from L3 (B's traffic per FLOP is 2 / rows bytes). Measured on a 2-core
// Xeon, 4096x2048x8192 at 1/8, avx512 path, two threads: 512 KiB / 48 rows (A always in L2, B
// streamed 4-5x as often) ran the product 6.3x and its backward 6.7-7.1x faster than dense;
// 1 MiB / 256 rows 9.0-9.2x and 7.4-7.8x (one thread alone, in CPU time, the two were even).
constexpr int64_t kChunkBytes = 1024 * 1024;
constexpr int64_t kMinChunkRows = 256;
// Stored blocks of B per column group in sparse_product: half of L2 beside the chunk of A.
constexpr int64_t kGroupBytes = 512 * 1024;
// Row tiles per pass over a column group: at 2048x512 @ 512x1536 with one stored 64x64 block
// per column (one thread, AVX-512 Xeon, CPU time) 4 ran the product at 150-154 GFLOP/s (2 and 3
// no faster), a whole 510-row chunk per column (the order before) at 135-140.
constexpr int64_t kGroupTiles = 4;
// Rows per chunk of the reduction in sparse_outer: a (rows, kb) slice of P and a (rows, nb)
// slice of Q stay in L1 while all tiles of one block read them.
constexpr int64_t kOuterRows = 96;
// Fewest rows per chunk of sparse_backward (unless a participant has fewer): every chunk loads
// and stores each dW block once. At 4096x2048x8192 (1/8) the L2 rule alone gives 24-row chunks
// and the one-pass backward ran at 107-110 GFLOP/s in one thread's CPU time, with 96 at 119
// (dx and dvalues apart: 114 and 120).
constexpr int64_t kMinBackwardRows = 96;
// Below this many multiply-adds a call runs on one thread (thread start costs ~20 us).
constexpr double kMinParallelMacs = 4e6;

template <int R, int... NV>
constexpr void fill_row(GatherFn* g, OuterFn* o, std::integer_sequence<int, NV...>) {
  ((g[NV] = &gather_tile<R, NV + 1>, o[NV] = &outer_tile<R, NV + 1>), ...);
}

template <int... R>
struct Tables {
  GatherFn gather[MR][MAXNV];
  OuterFn outer[MR][MAXNV];
  Tables() {
    (fill_row<R + 1>(gather[R], outer[R], std::make_integer_sequence<int, MAXNV>{}), ...);
  }
};

template <int... R>
Tables<R...> make_tables(std::integer_sequence<int, R...>) {
  return Tables<R...>();
}

const auto& tables() {
  static const auto t = make_tables(std::make_integer_sequence<int, MR>{});
  return t;
}

int effective_threads(int threads, double macs) {
  return macs < kMinParallelMacs ? 1 : std::max(1, threads);
}

}  // namespace

GatherFn gather_fn(int r, int nv) { return tables().gather[r - 1][nv - 1]; }
OuterFn outer_fn(int r, int nv) { return tables().outer[r - 1][nv - 1]; }

// C[0:rows, 0:nb] (leading dimension ldc) = sum over the n entries e of
// A[0:rows, a_off[e] : +kb] @ B_e, B_e = B + b_off[e] (kb, nb) row-major: one output block-column
// of a sparse product over `rows` rows of A (leading dimension lda), remainders included.
static void gather_block(const float* A, int64_t lda, const int64_t* a_off, const float* B,
                         const int64_t* b_off, int n, int kb, int nb, float* C, int64_t ldc,
                         int64_t rows) {
  if (n == 0) {
    for (int64_t m = 0; m < rows; ++m) std::memset(C + m * ldc, 0, sizeof(float) * nb);
    return;
  }
  // Per row tile, all of the column's whole vectors: `full` passes of MAXNV vectors in one
  // call, then the rest (nb_vec % (MAXNV * W), e.g. 48 of 112 columns on avx512).
  const int nb_vec = nb - nb % W;
  const int full = nb_vec / (MAXNV * W), rest = nb_vec % (MAXNV * W) / W;
  for (int64_t m = 0; m < rows; m += MR) {
    const int r = static_cast<int>(std::min<int64_t>(MR, rows - m));
    const float* Am = A + m * lda;
    float* Cm = C + m * ldc;
    if (full > 0) gather_fn(r, MAXNV)(Am, lda, a_off, B, b_off, n, kb, nb, Cm, ldc, full);
    const int c0 = full * MAXNV * W;
    if (rest > 0) gather_fn(r, rest)(Am, lda, a_off, B + c0, b_off, n, kb, nb, Cm + c0, ldc, 1);
  }
  for (int c = nb_vec; c < nb; ++c) {  // columns beyond whole vectors (nb % W)
    for (int64_t m = 0; m < rows; ++m) {
      float s = 0.f;
      for (int i = 0; i < n; ++i) {
        const float* a = A + m * lda + a_off[i];
        const float* b = B + b_off[i] + c;
        for (int kk = 0; kk < kb; ++kk) s += a[kk] * b[kk * nb];
      }
      C[m * ldc + c] = s;
    }
  }
}

// D (kb, nb) (+)= P[0:rows, 0:kb]^T @ Q[0:rows, 0:nb] (leading dimensions ldp, ldq; D
// contiguous), remainders included; acc=false overwrites D.
static void outer_block(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t rows,
                        int kb, int nb, float* D, bool acc) {
  const int nb_vec = nb - nb % W;
  const int full = nb_vec / (MAXNV * W), rest = nb_vec % (MAXNV * W) / W;  // as in gather_block
  for (int i0 = 0; i0 < kb; i0 += MR) {
    const int r = std::min(MR, kb - i0);
    float* di = D + int64_t(i0) * nb;
    if (full > 0) outer_fn(r, MAXNV)(P + i0, ldp, Q, ldq, rows, di, nb, acc, full);
    const int c0 = full * MAXNV * W;
    if (rest > 0) outer_fn(r, rest)(P + i0, ldp, Q + c0, ldq, rows, di + c0, nb, acc, 1);
    for (int c = nb_vec; c < nb; ++c) {
      for (int i = i0; i < i0 + r; ++i) {
        float s = acc ? D[int64_t(i) * nb + c] : 0.f;
        for (int64_t m = 0; m < rows; ++m) s += P[m * ldp + i] * Q[m * ldq + c];
        D[int64_t(i) * nb + c] = s;
      }
    }
  }
}

// One thread's rows [m0, m1) of sparse_product, in chunks of chunk_rows rows of A (in L2). Per
// chunk, output block-columns in groups whose stored blocks of B fit kGroupBytes (in L2), and
// per group, kGroupTiles row tiles at a time across all its columns: the tiles' rows of A stay in
// L1 while every column reads them, one B block serves kGroupTiles tiles from L1, and C's rows
// are written in order.
static void product_rows(const float* A, int64_t lda, int64_t m0, int64_t m1, const float* B,
                         int kb, int nb, const BlockList& list, float* C, int64_t ldc,
                         int64_t chunk_rows) {
  const int64_t n_out = static_cast<int64_t>(list.ptr.size()) - 1;
  const int64_t block_bytes = int64_t(sizeof(float)) * kb * nb, group_rows = kGroupTiles * MR;
  std::vector<int64_t> a_off(list.a_blk.size());
  for (int64_t i = 0; i < int64_t(a_off.size()); ++i) a_off[i] = list.a_blk[i] * kb;
  for (int64_t mc0 = m0; mc0 < m1; mc0 += chunk_rows) {
    const int64_t mc1 = std::min(m1, mc0 + chunk_rows);
    for (int64_t o0 = 0, o1; o0 < n_out; o0 = o1) {
      o1 = o0 + 1;  // at least one column, then while the group's blocks fit kGroupBytes
      while (o1 < n_out && (list.ptr[o1 + 1] - list.ptr[o0]) * block_bytes <= kGroupBytes) ++o1;
      for (int64_t mg = mc0; mg < mc1; mg += group_rows) {
        for (int64_t o = o0; o < o1; ++o) {
          const int64_t e0 = list.ptr[o];
          gather_block(A + mg * lda, lda, a_off.data() + e0, B, list.b_off.data() + e0,
                       static_cast<int>(list.ptr[o + 1] - e0), kb, nb, C + mg * ldc + o * nb, ldc,
                       std::min(group_rows, mc1 - mg));
        }
      }
    }
  }
}

void sparse_product(const float* A, int64_t lda, int64_t M, const float* B, int kb, int nb,
                    const BlockList& list, float* C, int64_t ldc, int threads,
                    const Schedule& schedule) {
  const double macs = double(M) * double(list.a_blk.size()) * kb * nb;
  const int t = effective_threads(threads, macs);
  const int64_t chunk_rows = std::max(kMinChunkRows, kChunkBytes / (4 * lda)) / MR * MR;
  parallel_ranges(M, MR, t, [&](int, int64_t m0, int64_t m1) {
    product_rows(A, lda, m0, m1, B, kb, nb, list, C, ldc, chunk_rows);
  }, schedule);
}

// Copies rows [m0, m0+rows) of a (*, ld) matrix's columns [c, c+width) into dst (rows, width).
static void pack_slice(const float* src, int64_t ld, int64_t m0, int64_t rows, int64_t c, int width,
                       float* dst) {
  for (int64_t m = 0; m < rows; ++m)
    std::memcpy(dst + m * width, src + (m0 + m) * ld + c, sizeof(float) * width);
}

// One thread's blocks [e0, e1) of sparse_outer. P and Q slices of a chunk of rows are copied
// contiguous first (strides of 2^k floats would map every row to the same L1 set).
static void outer_blocks(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t M,
                         const int64_t* p_off, const int64_t* q_off, int64_t e0, int64_t e1, int kb,
                         int nb, float* D) {
  const int64_t block = int64_t(kb) * nb;
  if (M == 0) {
    std::memset(D + e0 * block, 0, sizeof(float) * block * (e1 - e0));
    return;
  }
  std::vector<float> pp(kOuterRows * kb), qp(kOuterRows * nb);
  for (int64_t mc0 = 0; mc0 < M; mc0 += kOuterRows) {
    const int64_t rows = std::min(kOuterRows, M - mc0);
    const bool acc = mc0 > 0;
    int64_t q_packed = -1;
    for (int64_t e = e0; e < e1; ++e) {
      pack_slice(P, ldp, mc0, rows, p_off[e], kb, pp.data());
      if (q_off[e] != q_packed) pack_slice(Q, ldq, mc0, rows, q_packed = q_off[e], nb, qp.data());
      outer_block(pp.data(), kb, qp.data(), nb, rows, kb, nb, D + e * block, acc);
    }
  }
}

void sparse_outer(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t M,
                  const int64_t* p_off, const int64_t* q_off, int64_t n_blocks, int kb, int nb,
                  float* D, int threads, const Schedule& schedule) {
  const double macs = double(M) * double(n_blocks) * kb * nb;
  parallel_ranges(n_blocks, 1, effective_threads(threads, macs), [&](int, int64_t e0, int64_t e1) {
    outer_blocks(P, ldp, Q, ldq, M, p_off, q_off, e0, e1, kb, nb, D);
  }, schedule);
}

// Copies rows [0, rows) of the n_blk column blocks (w columns each) of src (leading dimension
// ld) block-major: block b to dst + b * rows * w, (rows, w) row-major. Reads src row by row
// (sequential, so the hardware prefetchers stream it; per-block strided reads would not).
static void pack_block_major(const float* src, int64_t ld, int64_t rows, int64_t n_blk, int w,
                             float* dst) {
  const int w_vec = w - w % W;
  for (int64_t m = 0; m < rows; ++m) {
    const float* s = src + m * ld;
    float* d = dst + m * w;
    for (int64_t b = 0; b < n_blk; ++b, s += w, d += rows * w) {  // inline: w is only ~64
      for (int c = 0; c < w_vec; c += W) vstore(d + c, vload(s + c));
      for (int c = w_vec; c < w; ++c) d[c] = s[c];
    }
  }
}

// One slice's rows [m0, m1) of sparse_backward, in chunks of `chunk` rows: the chunk of dY
// copied block-major into gp (it stays in L2), then its dX (gathers over each input block-row's
// blocks) and every block's dW (the first chunk overwrites D, the others accumulate into it).
// Returns whether D was written (false for an empty slice). X is read in place: copying it
// block-major too measured 5-15% slower (one thread, AVX-512 Xeon, CPU time, small-30m shapes).
static bool backward_rows(const float* X, int64_t ldx, const float* dY, int64_t ldy, int64_t m0,
                          int64_t m1, int64_t nc, const float* Wt, const RowBlocks& rb, int bk,
                          int bn, float* dX, int64_t lddx, float* D, int64_t chunk, float* gp) {
  const int64_t nr = static_cast<int64_t>(rb.ptr.size()) - 1, block = int64_t(bk) * bn;
  const int64_t group_rows = kGroupTiles * MR;
  std::vector<int64_t> a_off(rb.col.size()), b_off(rb.col.size());
  for (size_t s = 0; s < b_off.size(); ++s) b_off[s] = rb.blk[s] * block;
  for (int64_t mc0 = m0; mc0 < m1; mc0 += chunk) {
    const int64_t rows = std::min(chunk, m1 - mc0);
    pack_block_major(dY + mc0 * ldy, ldy, rows, nc, bn, gp);
    for (size_t s = 0; s < a_off.size(); ++s) a_off[s] = rb.col[s] * rows * bn;
    // dX: kGroupTiles row tiles at a time across all input block-rows (as in product_rows).
    for (int64_t mg = 0; mg < rows; mg += group_rows)
      for (int64_t i = 0; i < nr; ++i)
        gather_block(gp + mg * bn, bn, a_off.data() + rb.ptr[i], Wt, b_off.data() + rb.ptr[i],
                     int(rb.ptr[i + 1] - rb.ptr[i]), bn, bk, dX + (mc0 + mg) * lddx + i * bk,
                     lddx, std::min(group_rows, rows - mg));
    // dW: per stored block, over all the chunk's rows (reading them in slices of kOuterRows
    // rows, to keep P and Q in L1, measured no faster).
    for (int64_t i = 0; i < nr; ++i)
      for (int64_t s = rb.ptr[i]; s < rb.ptr[i + 1]; ++s)
        outer_block(X + mc0 * ldx + i * bk, ldx, gp + a_off[s], bn, rows, bk, bn, D + b_off[s],
                    mc0 > m0);
  }
  return m1 > m0;
}

void sparse_backward(const float* X, int64_t ldx, const float* dY, int64_t ldy, int64_t M,
                     int64_t nc, const float* Wt, const RowBlocks& by_row, int64_t n_blocks,
                     int bk, int bn, float* dX, int64_t lddx, float* dW, int threads,
                     const Schedule& schedule) {
  const int64_t nr = static_cast<int64_t>(by_row.ptr.size()) - 1, part = n_blocks * bk * bn;
  if (M == 0) {
    std::memset(dW, 0, sizeof(float) * part);
    return;
  }
  const int t = effective_threads(threads, 2.0 * double(M) * double(part));
  // Rows per chunk: its rows of X and dY fill at most kChunkBytes (in L2) but for
  // kMinBackwardRows, and about kRangesPerThread * 2 chunks per participant.
  const int64_t width = nr * bk + nc * bn;
  const int64_t by_bytes = std::max(kMinBackwardRows, kChunkBytes / (4 * width) / MR * MR);
  const int64_t by_split = (M + t * kRangesPerThread * 2 - 1) / (t * kRangesPerThread * 2);
  const int64_t chunk = std::min(by_bytes, (by_split + MR - 1) / MR * MR);
  // Rows split into t fixed slices at chunk boundaries, slice u accumulating its own dW (slice 0
  // into dW itself, the others into partials summed in slice order at the end): the sum order
  // depends on t alone, never on which thread claimed a slice, so a step is bit-reproducible.
  // Each participant has its own copy of dY's chunk (scratch by participant id).
  thread_local std::vector<float> scratch;
  const int64_t pack = chunk * nc * bn;
  // Grown only: shrinking and regrowing between the layers' calls would zero-fill MBs each time.
  const size_t need = size_t(t * pack + (t - 1) * part);
  if (scratch.size() < need) scratch.resize(need);
  // (A lambda names a thread_local as the running thread's own: capture a plain pointer.)
  float* const base = scratch.data();
  float* const partials = base + t * pack;
  const int64_t units = (M + chunk - 1) / chunk;
  auto slice_start = [&](int64_t u) { return std::min(M, units * u / t * chunk); };
  std::vector<char> started(t, 0);
  parallel_ranges(t, 1, t, [&](int id, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u)
      started[u] = backward_rows(X, ldx, dY, ldy, slice_start(u), slice_start(u + 1), nc, Wt,
                                 by_row, bk, bn, dX, lddx, u == 0 ? dW : partials + (u - 1) * part,
                                 chunk, base + id * pack);
  }, schedule);
  if (!started[0]) std::memset(dW, 0, sizeof(float) * part);
  for (int u = 1; u < t; ++u) {
    if (!started[u]) continue;
    const float* p = partials + (u - 1) * part;
    for (int64_t i = 0; i < part; ++i) dW[i] += p[i];
  }
}

void transpose_blocks(const float* src, int64_t n_blocks, int rows, int cols, float* dst,
                      int threads, const Schedule& schedule) {
  const int64_t block = int64_t(rows) * cols;
  const double work = double(n_blocks) * block * 64;  // weigh copies like multiply-adds
  parallel_ranges(n_blocks, 1, effective_threads(threads, work), [&](int, int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const float* s = src + e * block;
      float* d = dst + e * block;
      for (int i0 = 0; i0 < rows; i0 += 16)
        for (int j0 = 0; j0 < cols; j0 += 16)
          for (int i = i0; i < std::min(rows, i0 + 16); ++i)
            for (int j = j0; j < std::min(cols, j0 + 16); ++j) d[int64_t(j) * rows + i] = s[int64_t(i) * cols + j];
    }
  }, schedule);
}

}  // namespace bsk
