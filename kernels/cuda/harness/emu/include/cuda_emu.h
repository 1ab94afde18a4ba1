// Force-included (g++ -include) before every rewritten kernel source of the CUDA emulator: the device
// built-ins and intrinsics the kernels use, then the macros that make g++ compile the *device* branches
// (__CUDACC__, __CUDA_ARCH__). Test-only: see kernels/cuda/harness/emu/README.md.
#ifndef CBEMU_CUDA_EMU_H_
#define CBEMU_CUDA_EMU_H_

#include "cuda_emu_api.h"

// ---- warp intrinsics (CUDA's names and defaults; `width` encoded as the CUDA headers encode it) --------
namespace cbemu {
inline int shuffle_c(int width, bool clamp) {
  const bool pow2 = width >= 1 && width <= 32 && (width & (width - 1)) == 0;
  if (!pow2) trap();  // CUDA: undefined for a width that is not a power of two in [1, 32]
  return ((32 - width) << 8) | (clamp ? 0x1f : 0);
}
template <typename T>
T shuffle_value(int mode, unsigned mask, T var, int b, int c) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of an unsupported type");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = shuffle(mode, mask, bits, int(sizeof(T)), b, c);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace cbemu

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return cbemu::shuffle_value(cbemu::kShflIdx, mask, var, src_lane, cbemu::shuffle_c(width, true));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return cbemu::shuffle_value(cbemu::kShflUp, mask, var, int(delta), cbemu::shuffle_c(width, false));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return cbemu::shuffle_value(cbemu::kShflDown, mask, var, int(delta), cbemu::shuffle_c(width, true));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return cbemu::shuffle_value(cbemu::kShflBfly, mask, var, lane_mask, cbemu::shuffle_c(width, true));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) { return cbemu::vote(cbemu::kVoteBallot, mask, predicate); }
inline int __any_sync(unsigned mask, int predicate) { return int(cbemu::vote(cbemu::kVoteAny, mask, predicate)); }
inline int __all_sync(unsigned mask, int predicate) { return int(cbemu::vote(cbemu::kVoteAll, mask, predicate)); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)cbemu::vote(cbemu::kSyncWarp, mask, 0); }
inline void __syncthreads() { cbemu::syncthreads(); }
[[noreturn]] inline void __trap() { cbemu::trap(); }
// Block-local memory is sequentially consistent between synchronisation points here: no fence needed.
inline void __threadfence_block() {}
// Blocks run on different OS threads: a grid-wide publication (cb_divisor.cuh) needs a real fence.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// Device-memory atomics on 32-bit words, sequentially consistent across the OS threads running blocks.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  if (old == 0) cbemu::atomic_winner();  // the first to draw: delayed, so missing waits on it show
  return old;
}
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
// The back-off of a spin-wait on another block: fails the launch when that block can no longer release
// it (another block failed) or after a time limit (see spin_wait).
inline void __nanosleep(unsigned ns) { cbemu::spin_wait(ns); }
// The read-only data path reads the same bytes.
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }

// ---- what the rewritten sources name ---------------------------------------------------------------
// The C++ API templates cuda_runtime.h defines only for nvcc (`#if defined __CUDACC__`), same signatures.
template <class T>
static inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, T* entry) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}

#define warpSize 32
#define cudaLaunchKernelEx ::cbemu::launch_kernel_ex

// The rewrite turns every `__shared__` declaration into a thread_local one plus its registration, and
// every __launch_bounds__ into a check at the top of the kernel: any left over is a rewrite failure.
#undef __shared__
#define __shared__ CBEMU_SHARED_DECLARATION_NOT_REWRITTEN
#undef __launch_bounds__
#define __launch_bounds__(...) CBEMU_LAUNCH_BOUNDS_NOT_REWRITTEN

// Device code from here on: the kernels' `#if defined(__CUDA_ARCH__)` branches are the ones compiled.
#define __CUDACC__ 1
#define __CUDA_ARCH__ CBEMU_ARCH

#endif  // CBEMU_CUDA_EMU_H_
