// Block-sparse float32 products on row-major matrices, parallel over std::threads.
//
// The three products of a block-sparse layer y = x @ W (W stored as blocks, see layout.py):
//   forward   y  = x @ W            sparse_product over W's stored blocks per output column
//   backward  dx = dy @ W^T         sparse_product over W^T's blocks per input row (transposed)
//             dW = x^T @ dy         sparse_outer, only at stored blocks
//             both at once          sparse_backward (one pass over x and dy)
// No atomics: every thread writes disjoint rows (products) or disjoint blocks (outer);
// sparse_backward sums partial dW of fixed row slices once at the end, in slice order.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel.h"

namespace bsk {

// Stored blocks grouped by output block-column o (CSR): entries ptr[o] .. ptr[o+1]-1.
// Entry e reads A's column block a_blk[e] (columns a_blk[e]*kb .. +kb-1) and the (kb, nb)
// row-major block at B + b_off[e].
struct BlockList {
  std::vector<int64_t> ptr, a_blk, b_off;
};

// C (M, n_out*nb; leading dimension ldc) = per output block-column o:
//   sum over entries e of o: A[:, a_blk[e]*kb : +kb] @ B[b_off[e]] (kb, nb).
// A is (M, lda) row-major, lda a multiple of kb. Output blocks without entries are zero.
void sparse_product(const float* A, int64_t lda, int64_t M, const float* B, int kb, int nb,
                    const BlockList& list, float* C, int64_t ldc, int threads,
                    const Schedule& schedule = {});

// D[e] (kb, nb) = P[:, p_off[e] : +kb]^T @ Q[:, q_off[e] : +nb] for e < n_blocks, reducing over
// the M rows. P has leading dimension ldp, Q ldq; D is n_blocks contiguous (kb, nb) blocks.
void sparse_outer(const float* P, int64_t ldp, const float* Q, int64_t ldq, int64_t M,
                  const int64_t* p_off, const int64_t* q_off, int64_t n_blocks, int kb, int nb,
                  float* D, int threads, const Schedule& schedule = {});

// Stored blocks grouped by input block-row i (CSR): entries ptr[i] .. ptr[i+1]-1; entry s is the
// stored block blk[s] (index into the flat block arrays) of output block-column col[s].
struct RowBlocks {
  std::vector<int64_t> ptr, col, blk;
};

// Backward of y = X @ W, W (nr*bk, nc*bn) given by stored (bk, bn) blocks, in one pass over
// chunks of rows (each chunk of X and dY is read once and feeds both products):
//   dX (M, nr*bk; leading dimension lddx) = dY @ W^T,
//   dW[e] (bk, bn) = X[:, block-row of e]^T @ dY[:, block-column of e] for e < n_blocks,
// X (M, nr*bk) with leading dimension ldx, dY (M, nc*bn) with ldy; Wt holds every stored block
// transposed: (bn, bk) row-major at Wt + e*bk*bn. by_row lists every stored block once.
void sparse_backward(const float* X, int64_t ldx, const float* dY, int64_t ldy, int64_t M,
                     int64_t nc, const float* Wt, const RowBlocks& by_row, int64_t n_blocks,
                     int bk, int bn, float* dX, int64_t lddx, float* dW, int threads,
                     const Schedule& schedule = {});

// Dst[e] = Src[e]^T for n_blocks row-major (rows, cols) blocks.
void transpose_blocks(const float* src, int64_t n_blocks, int rows, int cols, float* dst,
                      int threads, const Schedule& schedule = {});

}  // namespace bsk
