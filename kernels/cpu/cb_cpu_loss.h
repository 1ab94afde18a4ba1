// A whole CPU loss call over (M, C) logits, on top of the row kernels of cb_cpu_rows.h: the
// reduction's divisor (one pass over the targets), the rows in fixed chunks spread over OpenMP
// threads, and the reduced loss. Written once for both CPU front ends: cbbench._cpu (Cython, any
// build) and cbbench._C (the torch extension that also builds the autograd node, for small batches).
//
// The rows' gradients are written already divided by the divisor, so it is computed first.
// Divisors (cbbench/reference.py, reduction_denominator): "mean" = number of valid rows (targets
// that are not ignore_index); "weighted_mean" = sum of their weights ("mean" without a weight);
// "sum"/"none" = 1; a divisor of exactly 0 (nothing to average) becomes 1, a negative weight sum is
// kept. Each chunk's loss sum is kept apart and the sums are added in chunk order, so the reduced
// loss is bitwise the same at any thread count and schedule.
#ifndef CBBENCH_CB_CPU_LOSS_H_
#define CBBENCH_CB_CPU_LOSS_H_

#include <stdint.h>
#include <stdlib.h>

#include "cb_cpu_rows.h"

enum { CB_RED_NONE = 0, CB_RED_SUM = 1, CB_RED_MEAN = 2, CB_RED_WEIGHTED_MEAN = 3 };

// Below this many logits a second thread costs more (wake-up, cache traffic) than it saves.
static const int64_t CB_MIN_ELEMENTS_PER_THREAD = 32768;
// Rows are handed out in chunks of about this many logits (dynamic schedule): a thread that the OS
// preempts (the cores are shared) then delays only its chunk, not a static half of the batch.
static const int64_t CB_ELEMENTS_PER_CHUNK = 65536;

static inline int cb_loss_threads(int64_t M, int64_t C, int max_threads) {
  int64_t by_work = (M * C) / CB_MIN_ELEMENTS_PER_THREAD;
  int64_t n = max_threads;
  if (by_work < n) n = by_work;
  if (M < n) n = M;
  return n < 1 ? 1 : (int)n;
}

static inline int64_t cb_chunk_rows(int64_t C) {
  int64_t rows = CB_ELEMENTS_PER_CHUNK / (C > 0 ? C : 1);
  return rows < 1 ? 1 : rows;
}

// Divisor for class-index targets; *bad_row is the first row whose target is neither ignore_index
// nor in [0, C), else -1 (the rows are then not worth running: callers raise).
static inline double cb_index_divisor(const int64_t* y, int64_t M, int64_t C, const float* weight,
                                      int64_t ignore_index, int red, int64_t* bad_row) {
  int64_t count = 0;
  double wsum = 0.0;
  *bad_row = -1;
  for (int64_t i = 0; i < M; ++i) {
    const int64_t yi = y[i];
    if (yi == ignore_index) continue;
    if (yi < 0 || yi >= C) {
      *bad_row = i;
      return 1.0;
    }
    ++count;
    if (weight) wsum += weight[yi];
  }
  if (red == CB_RED_WEIGHTED_MEAN && weight) return wsum != 0.0 ? wsum : 1.0;
  if (red == CB_RED_MEAN || red == CB_RED_WEIGHTED_MEAN) return count > 0 ? (double)count : 1.0;
  return 1.0;
}

// Sum of row(i) over chunks of rows, each chunk's sum in chunk_sums (n_chunks of them), added in order.
template <typename Row>
static inline double cb_chunked_rows(int64_t M, int64_t chunk, int n_threads, double* chunk_sums, const Row& row) {
  const int64_t n_chunks = (M + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (n_threads > 1)
  for (int64_t k = 0; k < n_chunks; ++k) {
    const int64_t hi = (k + 1) * chunk < M ? (k + 1) * chunk : M;
    double acc = 0.0;
    for (int64_t i = k * chunk; i < hi; ++i) acc += row(i);
    chunk_sums[k] = acc;
  }
  double total = 0.0;
  for (int64_t k = 0; k < n_chunks; ++k) total += chunk_sums[k];
  return total;
}

static inline double* cb_chunk_buffer(int64_t M, int64_t chunk) {
  const int64_t n = (M + chunk - 1) / chunk;
  return (double*)malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
}

// Softmax cross-entropy rows: returns the sum of the row losses; row losses to loss_rows (or NULL),
// g * d row loss / d z to grad (or NULL). chunk_sums: cb_chunk_buffer(M, cb_chunk_rows(C)).
template <typename T>
static inline double cb_softmax_rows(int isa, const T* z, const int64_t* y, int64_t M, int64_t C,
                                     const float* weight, const float* offset, const float* margin, T scale,
                                     T eps, int64_t ignore_index, T g, T* loss_rows, T* grad, int n_threads,
                                     double* chunk_sums) {
  return cb_chunked_rows(M, cb_chunk_rows(C), n_threads, chunk_sums, [&](int64_t i) {
    const T v = cb_softmax_ce_row(isa, z + i * C, C, y[i], weight, offset, margin, scale, eps, ignore_index, g,
                                  grad ? grad + i * C : (T*)0);
    if (loss_rows) loss_rows[i] = v;
    return (double)v;
  });
}

// Sigmoid cross-entropy / focal rows with class-index targets y (multi_hot NULL) or (M, C)
// multi-hot targets (y NULL); as cb_softmax_rows otherwise.
template <typename T>
static inline double cb_sigmoid_rows(int isa, const T* z, const int64_t* y, const T* multi_hot, int64_t M, int64_t C,
                                     const float* weight, T gamma, T alpha, bool focal, int64_t ignore_index, T g,
                                     T* loss_rows, T* grad, int n_threads, double* chunk_sums) {
  return cb_chunked_rows(M, cb_chunk_rows(C), n_threads, chunk_sums, [&](int64_t i) {
    T* grad_row = grad ? grad + i * C : (T*)0;
    const T v = multi_hot
        ? cb_sigmoid_multihot_row(isa, z + i * C, multi_hot + i * C, C, weight, gamma, alpha, focal, g, grad_row)
        : cb_sigmoid_index_row(isa, z + i * C, C, y[i], weight, gamma, alpha, focal, ignore_index, g, grad_row);
    if (loss_rows) loss_rows[i] = v;
    return (double)v;
  });
}

#endif  // CBBENCH_CB_CPU_LOSS_H_
