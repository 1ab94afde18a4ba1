// CUDA-only helpers of the cbbench kernels: element types, 16-byte vector loads with a scalar
// fallback, deterministic warp / block reductions. The scalar loss math lives in cb_math.h.
//
// Everything that is not a shuffle, a barrier, shared memory or a load instruction is __host__
// __device__ (CB_FN of cb_math.h): the host test kernels/cuda/harness/device_math_check.cu runs it on
// the CPU. The 16-byte moves (load16 / store16) have a host twin that moves the same bytes.
#ifndef CBBENCH_CB_CUDA_CUH_
#define CBBENCH_CB_CUDA_CUH_

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cb_math.h"

namespace cb {

// ---- element types ----------------------------------------------------------------------------
// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

CB_FN float to_acc(float x) { return x; }
CB_FN double to_acc(double x) { return x; }
CB_FN float to_acc(__half x) { return __half2float(x); }
CB_FN float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// Rounding to the storage type is round-to-nearest-even, as torch's .to(dtype).
template <typename T> CB_FN T from_acc(acc_t<T> x);
template <> CB_FN float from_acc<float>(float x) { return x; }
template <> CB_FN double from_acc<double>(double x) { return x; }
template <> CB_FN __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> CB_FN __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Special values without std::numeric_limits (host-only constexpr under nvcc).
template <typename A> CB_FN A neg_inf();
template <> CB_FN float neg_inf<float>() { return cb_float_from_bits(0xff800000u); }
template <> CB_FN double neg_inf<double>() { return cb_double_from_bits(0xfff0000000000000ULL); }
template <typename A> CB_FN A quiet_nan();
template <> CB_FN float quiet_nan<float>() { return cb_float_from_bits(0x7fc00000u); }
template <> CB_FN double quiet_nan<double>() { return cb_double_from_bits(0x7ff8000000000000ULL); }

// Elements per 16-byte vector. The element -> thread mapping of every kernel is built from this
// *logical* width whether or not a given row is 16-byte aligned, so reduction order (and hence every
// bit of the result) depends only on the shape and dtype, never on the address of the data.
template <typename T> struct Vec { static constexpr int size = 16 / sizeof(T); };

// Alignment of a row start for the vector paths below: 16, 8 or 4 (bytes), or 0 when only
// element-wise access is possible (a 2-byte aligned fp16/bf16 row). Vector offsets j are multiples
// of V elements (16 bytes), so row + j has the alignment of the row start.
CB_FN int row_align(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return (a & 15u) == 0 ? 16 : (a & 7u) == 0 ? 8 : (a & 3u) == 0 ? 4 : 0;
}

CB_FN bool aligned16(const void* p) { return row_align(p) == 16; }

// The 16 bytes at p (row_align(p) >= 4) through the read-only path, in the widest loads p allows.
// Only the load instructions differ between alignments, never the values or their order.
__device__ __forceinline__ uint4 ldg16(const void* p, int align) {
  if (align >= 16) return __ldg(reinterpret_cast<const uint4*>(p));
  if (align >= 8) {
    const uint2 lo = __ldg(reinterpret_cast<const uint2*>(p)), hi = __ldg(reinterpret_cast<const uint2*>(p) + 1);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
  }
  const unsigned* q = reinterpret_cast<const unsigned*>(p);
  return make_uint4(__ldg(q), __ldg(q + 1), __ldg(q + 2), __ldg(q + 3));
}

__device__ __forceinline__ void st16(void* p, int align, const uint4& raw) {
  if (align >= 16) {
    *reinterpret_cast<uint4*>(p) = raw;
  } else if (align >= 8) {
    reinterpret_cast<uint2*>(p)[0] = make_uint2(raw.x, raw.y);
    reinterpret_cast<uint2*>(p)[1] = make_uint2(raw.z, raw.w);
  } else {
    unsigned* q = reinterpret_cast<unsigned*>(p);
    q[0] = raw.x;
    q[1] = raw.y;
    q[2] = raw.z;
    q[3] = raw.w;
  }
}

// The V elements (16 bytes) at p, row_align(p) >= 4, converted to the accumulation type / stored from
// it. On the device ldg16 / st16 move the bytes; on the host (the harness) a plain copy moves the same
// bytes, so the host test runs exactly the lane logic of load_vec / store_vec.
template <typename T, typename A = acc_t<T>>
CB_FN void load16(const T* p, int align, A (&out)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
#if defined(__CUDA_ARCH__)
  const uint4 raw = ldg16(p, align);
  const T* e = reinterpret_cast<const T*>(&raw);
#else
  (void)align;
  T e[V];
  std::memcpy(e, p, sizeof e);
#endif
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = to_acc(e[v]);
}

template <typename T, typename A = acc_t<T>>
CB_FN void store16(T* p, int align, const A (&in)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
#if defined(__CUDA_ARCH__)
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int v = 0; v < V; ++v) e[v] = from_acc<T>(in[v]);
  st16(p, align, raw);
#else
  (void)align;
  T e[V];
  for (int v = 0; v < V; ++v) e[v] = from_acc<T>(in[v]);
  std::memcpy(p, e, sizeof e);
#endif
}

// Loads elements [j, j + V) of `row` (row has n_valid = C - j elements left) into acc-typed registers.
// Vectorised (16-, 8- or 4-byte loads, per row_align) when the whole vector is in range and the row
// start is at least 4-byte aligned; element-wise with bounds checks otherwise (never an out-of-bounds
// read). Out-of-range slots get `fill`.
template <typename T, typename A = acc_t<T>>
CB_FN void load_vec(const T* __restrict__ row, int64_t j, int64_t C, int align, A fill, A (&out)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
  if (align >= 4 && j + V <= C) {
    load16<T>(row + j, align, out);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = (j + v < C) ? to_acc(row[j + v]) : fill;
  }
}

// Stores the in-range part of a vector; vectorised when possible (same rule as load_vec).
template <typename T, typename A = acc_t<T>>
CB_FN void store_vec(T* __restrict__ row, int64_t j, int64_t C, int align, const A (&in)[Vec<T>::size]) {
  constexpr int V = Vec<T>::size;
  if (align >= 4 && j + V <= C) {
    store16<T>(row + j, align, in);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v)
      if (j + v < C) row[j + v] = from_acc<T>(in[v]);
  }
}

// The reduction's gradient scale: *grad_scale in the accumulation (= loss) dtype, or 1 without one.
template <typename A>
CB_FN A read_grad_scale(const void* grad_scale) {
  return grad_scale != nullptr ? *static_cast<const A*>(grad_scale) : A(1);
}

// ---- deterministic reductions -------------------------------------------------------------------
// Fixed-order trees only (no atomics): the same inputs and launch shape give the same bits.
// A NaN logit still gives a NaN loss through the sum of exponentials, so a plain max is enough.
struct MaxOp {
  template <typename A> CB_FN A operator()(A a, A b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename A> CB_FN A operator()(A a, A b) const { return a + b; }
};

// Butterfly over groups of G consecutive lanes (G a power of two <= 32); every lane of a group ends
// with the group's result. All 32 lanes of the warp must take part.
template <int G, typename A, typename Op>
__device__ __forceinline__ A group_reduce(A x, Op op) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, offset, G));
  return x;
}

// Block-wide reduction for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `identity` pads the missing warps; `scratch` holds >= 33 values. The trailing __syncthreads makes
// back-to-back calls with the same scratch safe.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A x, Op op, A identity, A* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  x = group_reduce<32>(x, op);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    A y = lane < warps ? scratch[lane] : identity;
    y = group_reduce<32>(y, op);
    if (lane == 0) scratch[32] = y;
  }
  __syncthreads();
  const A result = scratch[32];
  __syncthreads();
  return result;
}

}  // namespace cb

#endif  // CBBENCH_CB_CUDA_CUH_
