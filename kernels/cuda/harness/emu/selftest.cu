// The CUDA emulator's own test kernels (tests/test_cuda_emulator.py drives them through the C entry
// points at the end): shuffle lane maths, votes, deadlock and divergence detection, the cluster
// barrier and the lifetime of distributed shared memory, launch-geometry limits, per-block shared
// memory, fiber orders. Compiled only into the emulator (build_emulator.py), never by nvcc for a GPU.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

namespace cg = cooperative_groups;

namespace {

__device__ int lane_value() { return int(threadIdx.x) * 7 + 1000 * int(blockIdx.x) + 3; }

__global__ void shuffle_kernel(int mode, int arg, int width, int* out) {
  const int v = lane_value();
  int r = 0;
  switch (mode) {
    case 0: r = __shfl_sync(0xffffffffu, v, arg, width); break;
    case 1: r = __shfl_up_sync(0xffffffffu, v, unsigned(arg), width); break;
    case 2: r = __shfl_down_sync(0xffffffffu, v, unsigned(arg), width); break;
    default: r = __shfl_xor_sync(0xffffffffu, v, arg, width); break;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = r;
}

// A 64-bit value crosses lanes whole.
__global__ void shuffle_double_kernel(double* out) {
  const double v = double(threadIdx.x) + 0.25;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 5);
}

// Lanes [0, 16) and [16, 32) shuffle in two independent half-warp groups.
__global__ void half_warp_kernel(int* out) {
  const unsigned mask = threadIdx.x % 32 < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x] = __shfl_down_sync(mask, lane_value(), 1, 16);
}

__global__ void vote_kernel(int* out) {
  const int pred = threadIdx.x % 3 == 0;
  const unsigned ballot = __ballot_sync(0xffffffffu, pred);
  const int any = __any_sync(0xffffffffu, threadIdx.x == 31);
  const int all = __all_sync(0xffffffffu, threadIdx.x < 31);
  out[3 * threadIdx.x] = int(ballot);
  out[3 * threadIdx.x + 1] = any;
  out[3 * threadIdx.x + 2] = all;
}

// Even lanes wait at a shuffle for odd lanes that wait at __syncthreads: nothing can run.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  }
}

// Lanes 0-15 name the half warp, lanes 16-31 the whole warp: divergent masks.
__global__ void mask_mismatch_kernel(int* out) {
  const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffffffffu;
  out[threadIdx.x] = __shfl_sync(mask, lane_value(), 0);
}

// Lane 0 exits; the others name it in their mask.
__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, lane_value(), 1);
}

// Lanes of the mask read a lane outside it.
__global__ void outside_mask_kernel(int* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, lane_value(), 20);
}

// Threads that exited do not hold up __syncthreads: half the block leaves, the rest synchronise.
__global__ void exit_then_sync_kernel(int* out) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  if (threadIdx.x >= blockDim.x / 2) return;
  if (threadIdx.x == 0) count = 42;
  __syncthreads();
  out[threadIdx.x] = count;
}

// A two-level block sum; `barrier` = 0 leaves out the barrier between writing the warp partials and
// reading them, so the result depends on the order the threads run in.
__global__ void block_sum_kernel(int barrier, int* out) {
  __shared__ int partial[32];
  int v = int(threadIdx.x) + 1;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  if (barrier) __syncthreads();
  if (threadIdx.x < 32) {
    int s = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
  }
}

// Each block's __shared__ variable is its own, whichever OS thread runs it.
__global__ void shared_isolation_kernel(int* out) {
  __shared__ int mine;
  if (threadIdx.x == 0) mine = int(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = mine;
}

// Shared memory never written reads as the emulator's poison (all bits set).
__global__ void uninitialised_shared_kernel(int* out) {
  __shared__ int never_written[4];
  out[threadIdx.x] = never_written[threadIdx.x % 4];
}

__global__ void __launch_bounds__(64) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

__global__ void big_shared_kernel(int* out) {
  __shared__ float big[13 * 1024];  // 52 KiB of static shared memory
  big[threadIdx.x] = 1.0f;
  out[threadIdx.x] = int(big[threadIdx.x]);
}

__global__ void trap_kernel(int* out) {
  out[threadIdx.x] = 1;
  if (threadIdx.x == 5) __trap();
}

__global__ void index_kernel(int* out) {
  const int t = int((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
  const int b = int((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x);
  const int n = int(blockDim.x * blockDim.y * blockDim.z);
  out[b * n + t] = b * 10000 + t;
}

// Cluster: every block publishes its rank, the cluster synchronises, each block reads the next rank's
// value through distributed shared memory. mode 0: a final cluster.sync keeps every block's shared
// memory alive until its readers are done; mode 1: no final sync, and rank 0 exits first (the others
// pass two more __syncthreads before reading); mode 2: split arrive / wait with the reads in between.
__global__ void cluster_kernel(int mode, int* out) {
  __shared__ int slot;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int n = int(cluster.num_blocks());
  if (threadIdx.x == 0) slot = 100 + rank;
  cluster.sync();
  if (mode == 1 && rank == 0) return;
  if (mode == 1) {
    __syncthreads();
    __syncthreads();
  }
  const int next = *cluster.map_shared_rank(&slot, (rank + 1) % n);
  out[blockIdx.x * blockDim.x + threadIdx.x] = next;
  if (mode == 0) cluster.sync();
  if (mode == 2) {
    cluster.barrier_arrive();
    cluster.barrier_wait();
  }
}

// Rank 1 is split: half its threads wait at the cluster barrier, half at __syncthreads. Rank 0 waits
// at the cluster barrier. Nothing can complete.
__global__ void cluster_deadlock_kernel(int* out) {
  cg::cluster_group cluster = cg::this_cluster();
  if (cluster.block_rank() == 1 && threadIdx.x % 2) {
    __syncthreads();
  } else {
    cluster.sync();
  }
  out[threadIdx.x] = 1;
}

__global__ void arrive_twice_kernel(int* out) {
  cg::cluster_group cluster = cg::this_cluster();
  cluster.barrier_arrive();
  cluster.barrier_arrive();
  out[threadIdx.x] = 1;
}

int finish() { return int(cudaGetLastError()); }

}  // namespace

extern "C" {

int cbemu_selftest_shuffle(int mode, int arg, int width, int blocks, int threads, int* out) {
  shuffle_kernel<<<blocks, threads>>>(mode, arg, width, out);
  return finish();
}
int cbemu_selftest_shuffle_double(double* out) {
  shuffle_double_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_half_warp(int* out) {
  half_warp_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_vote(int* out) {
  vote_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_deadlock(int* out) {
  deadlock_kernel<<<1, 64>>>(out);
  return finish();
}
int cbemu_selftest_mask_mismatch(int* out) {
  mask_mismatch_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_exited_lane(int* out) {
  exited_lane_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_outside_mask(int* out) {
  outside_mask_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_exit_then_sync(int threads, int* out) {
  exit_then_sync_kernel<<<1, threads>>>(out);
  return finish();
}
int cbemu_selftest_block_sum(int barrier, int blocks, int threads, int* out) {
  block_sum_kernel<<<blocks, threads>>>(barrier, out);
  return finish();
}
int cbemu_selftest_shared_isolation(int blocks, int threads, int* out) {
  shared_isolation_kernel<<<blocks, threads>>>(out);
  return finish();
}
int cbemu_selftest_uninitialised_shared(int* out) {
  uninitialised_shared_kernel<<<1, 8>>>(out);
  return finish();
}
int cbemu_selftest_bounded(int threads, int* out) {
  bounded_kernel<<<1, threads>>>(out);
  return finish();
}
int cbemu_selftest_big_shared(int* out) {
  big_shared_kernel<<<1, 32>>>(out);
  return finish();
}
int cbemu_selftest_trap(int* out) {
  trap_kernel<<<2, 32>>>(out);
  return finish();
}
int cbemu_selftest_index(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, int* out) {
  index_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return finish();
}

namespace {
cudaLaunchConfig_t cluster_config(unsigned blocks, unsigned threads, unsigned cluster, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks, 1, 1);
  cfg.blockDim = dim3(threads, 1, 1);
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cluster;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}
}  // namespace

int cbemu_selftest_cluster(int mode, unsigned blocks, unsigned threads, unsigned cluster, int* out) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(blocks, threads, cluster, &attr);
  return int(cudaLaunchKernelEx(&cfg, cluster_kernel, mode, out));
}
int cbemu_selftest_cluster_deadlock(int* out) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(2, 64, 2, &attr);
  return int(cudaLaunchKernelEx(&cfg, cluster_deadlock_kernel, out));
}
int cbemu_selftest_arrive_twice(int* out) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(2, 32, 2, &attr);
  return int(cudaLaunchKernelEx(&cfg, arrive_twice_kernel, out));
}

}  // extern "C"
