// Per-core speed of the compiled block-sparse kernels, product by product, in CPU time.
//
// On a shared machine wall time measures the neighbours; the CPU time of the one thread that
// runs a kernel measures the kernel. For one shape (64 x 64 blocks, density 1/8, a random layout
// with the same number of blocks per column) it prints GFLOP/s per CPU-second of the forward
// y = x W, dx = dy W^T and dvalues = x^T dy (each the best of `reps`), of dx and dvalues in
// one pass (bsk::sparse_backward, what the FFI backward runs), and the register-only
// peak of this CPU for the vector width it was compiled for (a loop of independent FMAs).
//
// Build one binary per instruction-set path, with setup.py's flags, from the repository root:
//   g++ -std=c++17 -O3 -ffp-contract=fast -pthread -mavx2 -mfma \
//       -Isparsetrain/kernels/csrc benchmarks/kernel_profile.cc sparsetrain/kernels/csrc/kernels.cc \
//       -o /tmp/kernel_profile_avx2
//   (avx512: -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma)
// Run: /tmp/kernel_profile_avx2 TOKENS IN OUT [reps]     e.g. 2048 512 2048 5
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels.h"
#include "tiles.h"

namespace {

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// GFLOP/s of 2 * bsk::MR * bsk::MAXNV independent vector FMA chains (the tile's accumulators).
__attribute__((noinline)) double fma_peak() {
  constexpr int N = bsk::MR * bsk::MAXNV;
  bsk::vf acc[N];
  for (int i = 0; i < N; ++i) acc[i] = bsk::vsplat(float(i));
  bsk::vf a = bsk::vsplat(1.0001f), b = bsk::vsplat(0.9999f);
  const long iters = 20000000;
  const double t0 = cpu_seconds();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < N; ++i) acc[i] = acc[i] * a + b;
    asm volatile("" : "+x"(a));
  }
  const double t = cpu_seconds() - t0;
  float sink = 0;
  for (int i = 0; i < N; ++i) sink += acc[i][0];
  if (sink == 42.f) std::puts("");
  return 2.0 * iters * N * bsk::W / t * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s TOKENS IN OUT [reps]\n", argv[0]);
    return 2;
  }
  const int64_t M = atol(argv[1]), IN = atol(argv[2]), OUT = atol(argv[3]);
  const int reps = argc > 4 ? atoi(argv[4]) : 3;
  const int bk = 64, bn = 64;
  const int64_t nr = IN / bk, nc = OUT / bn, k = std::max<int64_t>(1, nr / 8), nb = nc * k;
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> x(M * IN), dy(M * OUT), v(nb * bk * bn), y(M * OUT), dx(M * IN), dv(v.size()),
      vt(v.size());
  for (auto* a : {&x, &dy, &v})
    for (auto& f : *a) f = u(gen);
  std::vector<int> rows(nb);
  for (int64_t j = 0; j < nc; ++j) {
    std::vector<int> p(nr);
    for (int i = 0; i < nr; ++i) p[i] = i;
    std::shuffle(p.begin(), p.end(), gen);
    std::sort(p.begin(), p.begin() + k);
    for (int64_t t = 0; t < k; ++t) rows[j * k + t] = p[t];
  }
  // The block lists of the FFI handlers (block_sparse.cc): per output column, per input row.
  bsk::BlockList fwd, bwd;
  fwd.ptr.resize(nc + 1);
  for (int64_t j = 0; j <= nc; ++j) fwd.ptr[j] = j * k;
  for (int64_t e = 0; e < nb; ++e) fwd.a_blk.push_back(rows[e]), fwd.b_off.push_back(e * bk * bn);
  bwd.ptr.assign(nr + 1, 0);
  for (int64_t e = 0; e < nb; ++e) ++bwd.ptr[rows[e] + 1];
  for (int64_t i = 0; i < nr; ++i) bwd.ptr[i + 1] += bwd.ptr[i];
  bwd.a_blk.resize(nb), bwd.b_off.resize(nb);
  std::vector<int64_t> fill(bwd.ptr.begin(), bwd.ptr.end() - 1), p_off(nb), q_off(nb);
  for (int64_t e = 0; e < nb; ++e) {
    const int64_t s = fill[rows[e]]++;
    bwd.a_blk[s] = e / k, bwd.b_off[s] = e * bk * bn;
    p_off[e] = int64_t(rows[e]) * bk, q_off[e] = (e / k) * bn;
  }
  bsk::RowBlocks by_row{bwd.ptr, bwd.a_blk, std::vector<int64_t>(nb)};  // as block_sparse.cc
  for (int64_t s = 0; s < nb; ++s) by_row.blk[s] = bwd.b_off[s] / (bk * bn);
  double best[4] = {1e30, 1e30, 1e30, 1e30};
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_seconds();
    bsk::sparse_product(x.data(), IN, M, v.data(), bk, bn, fwd, y.data(), OUT, 1);
    const double t1 = cpu_seconds();
    bsk::transpose_blocks(v.data(), nb, bk, bn, vt.data(), 1);
    bsk::sparse_product(dy.data(), OUT, M, vt.data(), bn, bk, bwd, dx.data(), IN, 1);
    const double t2 = cpu_seconds();
    bsk::sparse_outer(x.data(), IN, dy.data(), OUT, M, p_off.data(), q_off.data(), nb, bk, bn,
                      dv.data(), 1);
    const double t3 = cpu_seconds();
    bsk::transpose_blocks(v.data(), nb, bk, bn, vt.data(), 1);  // the FFI backward: one pass
    bsk::sparse_backward(x.data(), IN, dy.data(), OUT, M, nc, vt.data(), by_row, nb, bk, bn,
                         dx.data(), IN, dv.data(), 1);
    const double t4 = cpu_seconds();
    best[0] = std::min(best[0], t1 - t0), best[1] = std::min(best[1], t2 - t1);
    best[2] = std::min(best[2], t3 - t2), best[3] = std::min(best[3], t4 - t3);
  }
  const double flops = 2.0 * M * nb * bk * bn;  // per product
  std::printf("%ldx%ldx%ld, 64x64 blocks, %ld per column, %d-wide vectors, one thread: "
              "fwd %.1f, dx %.1f, dvalues %.1f, both in one pass %.1f GFLOP/s per CPU-second; "
              "FMA peak %.1f\n",
              long(M), long(IN), long(OUT), long(k), bsk::W, flops / best[0] * 1e-9,
              flops / best[1] * 1e-9, flops / best[2] * 1e-9, 2 * flops / best[3] * 1e-9,
              fma_peak());
  return 0;
}
