// The CUDA emulator's interface: what the rewritten kernels call (threadIdx & co, barriers, shuffles,
// votes, the cluster barrier and distributed shared memory, kernel launches) and what the host side
// calls to configure it and to read its findings. Test-only: see kernels/cuda/harness/emu/README.md.
//
// The CUDA toolkit's own headers supply every type (dim3, uint4, cudaError_t, cudaLaunchConfig_t,
// __half, __nv_bfloat16 and their host conversions); they are included here in *host* mode, before
// cuda_emu.h defines __CUDACC__ / __CUDA_ARCH__ for the kernel sources.
#ifndef CBEMU_CUDA_EMU_API_H_
#define CBEMU_CUDA_EMU_API_H_

#if defined(__CUDACC__) || defined(__CUDA_ARCH__)
#error "cuda_emu_api.h must be included before __CUDACC__ / __CUDA_ARCH__ are defined (it is force-included)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// The architecture the kernel sources are compiled for (__CUDA_ARCH__ in cuda_emu.h).
#ifndef CBEMU_ARCH
#define CBEMU_ARCH 900
#endif

// ---- what a kernel sees ---------------------------------------------------------------------------
// CUDA's built-in variables, as variables: threadIdx is switched by the block's scheduler whenever it
// resumes a fiber; the others are per block (one OS thread runs one block at a time).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace cbemu {

enum ShuffleMode { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflBfly = 3 };
enum VoteMode { kVoteBallot = 0, kVoteAny = 1, kVoteAll = 2, kSyncWarp = 3 };

void syncthreads();
[[noreturn]] void trap();
// One back-off step of a thread spinning on memory another block writes (__nanosleep): yields the OS
// thread; fails the launch when the launch has already failed elsewhere or the spin has lasted 60 s.
void spin_wait(unsigned ns);
// Called by the thread whose atomicAdd drew a counter's first value (it returned 0): the first such
// thread of a launch sleeps for the configured delay (cbemu_set_winner_delay), so that blocks which do not wait for what the winner then
// publishes run ahead of it and read what it has not written yet.
void atomic_winner();
// One warp-synchronous exchange (the PTX shfl.sync semantics: b = lane / offset / lane mask, c = the
// clamp and segment mask the CUDA headers encode from `width`). The value travels as raw bits.
uint64_t shuffle(int mode, unsigned mask, uint64_t bits, int size, int b, int c);
unsigned vote(int mode, unsigned mask, int predicate);
// A __shared__ variable declared by the running thread (the rewrite inserts the call after each
// declaration): registered once per block, filled with 0xff bytes (NaN / -1) when the block first
// declares it, counted against the static shared-memory limit.
void shared_var(void* addr, std::size_t bytes, const char* name);
// __launch_bounds__(max_threads[, min_blocks]) of the running kernel (inserted at the top of its body).
void launch_bounds(long max_threads, long min_blocks = 0);

// Thread-block clusters (sm_90): the running block's cluster.
void cluster_sync();
void cluster_arrive();
void cluster_wait();
void* map_shared_rank(void* addr, std::size_t bytes, int rank);
unsigned cluster_block_rank();
unsigned cluster_num_blocks();

// ---- launches -------------------------------------------------------------------------------------
struct LaunchSpec {
  dim3 grid, block;
  std::size_t dynamic_smem = 0;
  cudaStream_t stream = nullptr;
  unsigned cluster = 0;  // 0: no cluster attribute
  const void* kernel = nullptr;
};
cudaError_t run_launch(const LaunchSpec& spec, std::function<void()> body);

// kernel<<<grid, block, smem, stream>>>(args...) is rewritten to
// ::cbemu::LaunchConfig(grid, block, smem, stream)(kernel, args...).
struct LaunchConfig {
  LaunchSpec spec;
  LaunchConfig(dim3 grid, dim3 block, std::size_t smem = 0, cudaStream_t stream = nullptr) {
    spec.grid = grid;
    spec.block = block;
    spec.dynamic_smem = smem;
    spec.stream = stream;
  }
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), Args&&... args) const {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
    LaunchSpec s = spec;
    s.kernel = reinterpret_cast<const void*>(kernel);
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);  // copied as a launch copies them
    (void)run_launch(s, [kernel, params]() { std::apply(kernel, params); });
  }
};

// cudaLaunchKernelEx, with CUDA's signature (cuda_runtime.h's template): the launch attributes the
// emulator knows are the cluster dimension (x only) — any other attribute is refused.
cudaError_t launch_ex_spec(const cudaLaunchConfig_t* config, LaunchSpec& out);
template <typename... ExpTypes, typename... ActTypes>
cudaError_t launch_kernel_ex(const cudaLaunchConfig_t* config, void (*kernel)(ExpTypes...), ActTypes&&... args) {
  LaunchSpec s;
  const cudaError_t err = launch_ex_spec(config, s);
  if (err != cudaSuccess) return err;
  s.kernel = reinterpret_cast<const void*>(kernel);
  std::tuple<std::decay_t<ExpTypes>...> params(std::forward<ActTypes>(args)...);
  return run_launch(s, [kernel, params]() { std::apply(kernel, params); });
}

}  // namespace cbemu

// ---- host-side control (C linkage: the Python check drives it through ctypes) ---------------------------
extern "C" {
// Fiber order within a block: 0 forward (lowest thread first), 1 reverse, 2 seeded random.
void cbemu_set_order(int order, unsigned long long seed);
// Emulated device `device` (0..7): compute capability, SM count and the largest cluster that fits
// (cudaOccupancyMaxActiveClusters answers 0 above it). Defaults: 0 and 2..7 = 9.0, 1 = 8.0, 132 SMs, 8.
void cbemu_set_device(int device, int major, int minor, int sms, int max_cluster);
void cbemu_set_current_device(int device);
// cudaStreamIsCapturing answers "active" for this stream (nullptr: none).
void cbemu_set_capturing_stream(void* stream);
// OS threads running independent blocks (0: the machine's hardware threads).
void cbemu_set_workers(int workers);
// Microseconds the winner of a counter's first atomicAdd sleeps (default 2000, in grids of more than one block; 0: none).
void cbemu_set_winner_delay(int microseconds);
// Launches run so far, failed launches, device queries made while a stream was capturing.
long long cbemu_launch_count();
long long cbemu_failure_count();
long long cbemu_capture_violations();
void cbemu_reset_counters();
// The message of the most recent failed launch or refused configuration ("" when none).
const char* cbemu_last_failure();
// Device memory with guard bytes: `bytes` starting `offset` (mod 16) bytes past a 16-byte boundary,
// followed by canary bytes and a PROT_NONE page; cbemu_canaries_intact checks the canaries.
void* cbemu_alloc(std::size_t bytes, int offset);
int cbemu_canaries_intact(void* p);
void cbemu_free(void* p);
// Reports an invalid memory access of a kernel, naming its block and thread, and exits with status 70.
void cbemu_install_fault_handler();
// A label the fault report repeats (e.g. the case being run).
void cbemu_set_context(const char* what);
}

#endif  // CBEMU_CUDA_EMU_API_H_
