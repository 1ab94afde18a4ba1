// The CPU kernel module's share of a loss call beside the row kernels (cb_cpu_rows.h): the reduction's
// divisor -- its one CPU implementation -- and how many threads and chunks the rows take. Used by
// kernels/cpu/cpu_ops.h (the CPU kernels of the ops) and by the Cython row loops of kernels/cpu/_cpu.pyx.
//
// Divisors (cbbench/reference.py, reduction_denominator; cbbench/shapes.py documents the formula), with
// s_i the sample weights (1 without them): class-index targets: "mean" = number of valid rows (targets
// that are not ignore_index), "weighted_mean" = sum over them of s_i w_{y_i} (w = 1 without a weight);
// multi-hot targets: "mean" = number of positives (sum of the targets), "weighted_mean" = sum_i s_i times
// the mean column weight (1 without a weight); "sum" / "none" = 1. The *local* divisor is additive over disjoint rows (the distributed
// normaliser all-reduces it); the *finished* one floors it: "mean" at 1, a "weighted_mean" of exactly 0
// becomes 1 (a negative weight sum is kept).
#ifndef CBBENCH_CB_CPU_LOSS_H_
#define CBBENCH_CB_CPU_LOSS_H_

#include <stdint.h>

enum { CB_RED_NONE = 0, CB_RED_SUM = 1, CB_RED_MEAN = 2, CB_RED_WEIGHTED_MEAN = 3 };

// Below this many logits a second thread costs more (wake-up, cache traffic) than it saves.
static const int64_t CB_MIN_ELEMENTS_PER_THREAD = 32768;
// Rows are handed out in chunks of about this many logits (dynamic schedule): a thread that the OS
// preempts (the cores are shared) then delays only its chunk, not a static half of the batch. Each
// chunk's loss sum is kept apart and the sums are added in chunk order, so the reduced loss is bitwise
// the same at any thread count and schedule.
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

static inline int64_t cb_chunk_count(int64_t M, int64_t C) {
  const int64_t chunk = cb_chunk_rows(C);
  return (M + chunk - 1) / chunk;
}

// The local divisor of class-index targets; *bad_row is the first row whose target is neither
// ignore_index nor in [0, C), else -1 (callers raise).
static inline double cb_index_local_divisor(const int64_t* y, int64_t M, int64_t C, const float* weight,
                                            const float* sample_weight, int64_t ignore_index, int red,
                                            int64_t* bad_row) {
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
    wsum += (weight ? (double)weight[yi] : 1.0) * (sample_weight ? (double)sample_weight[i] : 1.0);
  }
  if (red == CB_RED_WEIGHTED_MEAN && (weight || sample_weight)) return wsum;
  if (red == CB_RED_MEAN || red == CB_RED_WEIGHTED_MEAN) return (double)count;
  return 1.0;
}

// The local divisor of (M, C) multi-hot targets (summed in row-major order).
template <typename T>
static inline double cb_multi_hot_local_divisor(const T* t, int64_t M, int64_t C, const float* weight,
                                                const float* sample_weight, int red) {
  if (red == CB_RED_MEAN) {
    double s = 0.0;
    for (int64_t i = 0; i < M * C; ++i) s += (double)t[i];
    return s;
  }
  if (red == CB_RED_WEIGHTED_MEAN) {
    double rows = (double)M;
    if (sample_weight) {
      rows = 0.0;
      for (int64_t i = 0; i < M; ++i) rows += (double)sample_weight[i];
    }
    if (!weight) return rows;
    double s = 0.0;
    for (int64_t j = 0; j < C; ++j) s += (double)weight[j];
    return s / (double)C * rows;
  }
  return 1.0;
}

static inline double cb_finish_divisor(int red, double d) {
  if (red == CB_RED_MEAN) return d < 1.0 ? 1.0 : d;  // as clamp_min(1): NaN stays NaN
  if (red == CB_RED_WEIGHTED_MEAN) return d != 0.0 ? d : 1.0;
  return 1.0;
}

#endif  // CBBENCH_CB_CPU_LOSS_H_
