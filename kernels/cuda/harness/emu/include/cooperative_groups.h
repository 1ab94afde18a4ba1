// The emulator's stand-in for <cooperative_groups.h>: the cluster group of sm_90 (sync, split
// arrive / wait, distributed shared memory) and the thread block, with the toolkit's member names.
// Test-only: see kernels/cuda/harness/emu/README.md.
#ifndef CBEMU_COOPERATIVE_GROUPS_H_
#define CBEMU_COOPERATIVE_GROUPS_H_

#include "cuda_emu_api.h"

namespace cooperative_groups {

class thread_block {
 public:
  static void sync() { cbemu::syncthreads(); }
  static dim3 group_index() { return dim3(::blockIdx.x, ::blockIdx.y, ::blockIdx.z); }
  static dim3 thread_index() { return dim3(::threadIdx.x, ::threadIdx.y, ::threadIdx.z); }
  static dim3 dim_threads() { return ::blockDim; }
  static unsigned thread_rank() {
    return (::threadIdx.z * ::blockDim.y + ::threadIdx.y) * ::blockDim.x + ::threadIdx.x;
  }
  static unsigned num_threads() { return ::blockDim.x * ::blockDim.y * ::blockDim.z; }
};
inline thread_block this_thread_block() { return thread_block(); }

class cluster_group {
 public:
  using arrival_token = struct {};
  static void sync() { cbemu::cluster_sync(); }
  static arrival_token barrier_arrive() {
    cbemu::cluster_arrive();
    return arrival_token();
  }
  static void barrier_wait() { cbemu::cluster_wait(); }
  static void barrier_wait(arrival_token&&) { cbemu::cluster_wait(); }
  template <typename T>
  static T* map_shared_rank(T* addr, int rank) {
    return static_cast<T*>(cbemu::map_shared_rank(static_cast<void*>(const_cast<std::remove_cv_t<T>*>(addr)), sizeof(T), rank));
  }
  static unsigned block_rank() { return cbemu::cluster_block_rank(); }
  static unsigned num_blocks() { return cbemu::cluster_num_blocks(); }
  static unsigned thread_rank() { return block_rank() * thread_block::num_threads() + thread_block::thread_rank(); }
  static unsigned num_threads() { return num_blocks() * thread_block::num_threads(); }
};
inline cluster_group this_cluster() { return cluster_group(); }

}  // namespace cooperative_groups

#endif  // CBEMU_COOPERATIVE_GROUPS_H_
