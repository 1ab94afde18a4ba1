// The CUDA emulator's runtime: kernels executed on the CPU, thread by thread. Test-only (see README.md
// in this folder for what it checks and what it cannot).
//
//   * A launch runs its blocks on a few OS threads; the blocks of a thread-block cluster run at the
//     same time, each on an OS thread of its own. A block's CUDA threads are ucontext fibers (own
//     stack, a guard page below it) that switch only at a synchronisation point: __syncthreads, a warp
//     shuffle or vote, a cluster barrier. Which fiber runs next is the configured order: lowest thread
//     first, highest first, or seeded random — a missing barrier that one order hides another exposes.
//   * `__shared__` variables are thread_local (rewritten by build_emulator.py), so one instance per block;
//     distributed shared memory maps an address into another block's instance by its offset from a
//     thread_local anchor (one module, one TLS layout in every thread).
//   * A shuffle waits for the lanes of its mask in its own warp; __syncthreads for the block's threads
//     that have not exited; the cluster barrier for the cluster's threads that have not exited.
//   * Whatever CUDA leaves undefined and the emulator can see fails the launch with a message naming
//     the block and thread: no fiber able to run while some wait (deadlock), shuffles that disagree on
//     their mask, a mask naming an exited or absent lane, a read from a lane outside the mask, a
//     block whose shared memory peers may still read when it exits, an arrive without a wait, __trap,
//     launch geometry beyond the device's limits or the kernel's __launch_bounds__, more than 48 KiB
//     of static shared memory.
#include "cuda_emu_api.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace cbemu {

namespace {

// A block's __shared__ variables lie at fixed offsets from this variable in every OS thread.
thread_local char tls_anchor;

constexpr int kMaxBlockThreads = 1024;
constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kSharedLimit = 48 * 1024;  // static, and dynamic without the opt-in attribute
constexpr int kMaxDevices = 8;
constexpr int kPortableCluster = 8;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// ---- configuration and counters (set between launches by the host) ---------------------------------
struct Device {
  int major = 9, minor = 0, sms = 132, max_cluster = kPortableCluster;
};
Device devices[kMaxDevices];
std::atomic<int> current_device{0};
std::atomic<int> fiber_order{0};
std::atomic<unsigned long long> order_seed{1};
std::atomic<int> worker_threads{0};
std::atomic<int> winner_delay_us{2000};
std::atomic<void*> capturing_stream{nullptr};
std::atomic<long long> n_launches{0}, n_failures{0}, n_capture_violations{0};
std::mutex failure_mutex;
std::string last_failure;
thread_local cudaError_t last_error = cudaSuccess;
thread_local cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;

struct DeviceInit {
  DeviceInit() { devices[1].major = 8; }
} device_init;

void record_failure(const std::string& message) {
  std::lock_guard<std::mutex> lock(failure_mutex);
  last_failure = message;
}

// A device query (attribute, function attributes, occupancy) while a stream is being captured.
void note_query() {
  if (capturing_stream.load() != nullptr) ++n_capture_violations;
}

// ---- fiber stacks -----------------------------------------------------------------------------------
std::size_t page_size() {
  static const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
  return page;
}

struct StackPool {
  std::mutex mutex;
  std::vector<char*> free;
  char* get() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!free.empty()) {
        char* s = free.back();
        free.pop_back();
        return s;
      }
    }
    void* p = mmap(nullptr, kStackBytes + page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "cbemu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, page_size(), PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    return static_cast<char*>(p);
  }
  void put(char* s) {
    std::lock_guard<std::mutex> lock(mutex);
    free.push_back(s);
  }
};
StackPool stacks;

// ---- launch, cluster, block, fiber ----------------------------------------------------------------------
struct Launch {
  LaunchSpec spec;
  std::function<void()> body;
  unsigned cluster = 1;
  int device = 0;
  int order = 0;
  unsigned long long seed = 1;
  std::atomic<bool> failed{false};
  std::atomic<bool> winner_delayed{false};  // atomic_winner has slept once in this launch
  std::mutex mutex;
  std::string message;
  void fail(const std::string& m) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!failed.exchange(true)) message = m;
  }
};

struct Cluster {
  int size = 1;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<char*> anchors;
  std::vector<bool> exited;
  int started = 0, finished = 0;
  // stalled_at[rank]: the barrier phase a block waits for with no thread able to run (kNotStalled:
  // running). A deadlock is every block finished or stalled at the current phase; a block stalled at
  // an earlier phase is about to wake.
  static constexpr uint64_t kNotStalled = ~uint64_t(0);
  std::vector<uint64_t> stalled_at;
  bool failed = false;
  uint64_t phase = 0;        // barrier phases completed
  long arrived = 0;          // arrivals in the current phase
  long expected = 0;         // threads of the cluster that have not exited
  // mapped_at[target][from]: the mapping thread's barrier arrivals at block `from`'s latest mapping of
  // `target`'s shared memory (-1: never mapped). `target` may exit only after waiting for the phase of
  // the mapper's next arrival.
  std::vector<std::vector<long long>> mapped_at;
  explicit Cluster(int n, long threads) : size(n), anchors(n, nullptr), exited(n, false), expected(threads * n),
                                          stalled_at(n, kNotStalled), mapped_at(n, std::vector<long long>(n, -1)) {}
  bool deadlocked() const {
    for (int r = 0; r < size; ++r)
      if (!exited[size_t(r)] && stalled_at[size_t(r)] != phase) return false;
    return true;
  }
  void advance() {
    ++phase;
    arrived = 0;
    cv.notify_all();
  }
};

enum State { kRunnable, kWaiting, kDone };
enum Wait { kNone, kSync, kWarp, kCluster };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  uint3 tid;
  int warp = 0, lane = 0;
  State state = kRunnable;
  Wait wait = kNone;
  bool pending_wait = false;  // arrived at the cluster barrier, not yet waited
  uint64_t arrive_phase = 0;  // the phase of that arrival
  long long arrivals = 0;
};

struct WarpRequest {
  bool vote = false;
  int mode = 0;
  unsigned mask = 0;
  uint64_t bits = 0;
  int size = 0, b = 0, c = 0;
};

struct Warp {
  unsigned members = 0, arrived = 0, exited = 0;
  WarpRequest req[32];
  uint64_t out[32] = {};
};

struct Block {
  Launch* launch = nullptr;
  Cluster* cluster = nullptr;
  int rank = 0;
  uint3 idx;
  int threads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  uint64_t runnable[kMaxBlockThreads / 64] = {};
  int live = 0, at_sync = 0, current = -1;
  ucontext_t scheduler;
  bool aborted = false;
  bool bounds_checked = false;
  std::vector<std::pair<char*, std::size_t>> shared;
  std::size_t shared_bytes = 0;
  std::mt19937_64 rng;
  uint64_t waited_phase = 0;  // barrier phases whose completion a thread of this block has waited for
  long long spins = 0;        // consecutive spin_wait calls (reset at a barrier)
  std::chrono::steady_clock::time_point spin_since;
};

thread_local Block* running = nullptr;

Block& this_block() {
  if (running == nullptr || running->current < 0) {
    std::fprintf(stderr, "cbemu: a device function was called outside a kernel launch\n");
    std::abort();
  }
  return *running;
}

std::string where(const Block& b, int i) {
  const uint3 t = b.fibers[size_t(i)].tid;
  return format("block (%u,%u,%u) thread (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z, t.x, t.y, t.z);
}

void fail_block(Block& b, const std::string& message) {
  b.launch->fail(message);
  b.aborted = true;
  std::lock_guard<std::mutex> lock(b.cluster->mutex);
  b.cluster->failed = true;
  b.cluster->cv.notify_all();
}

void yield() {
  Block& b = *running;
  swapcontext(&b.fibers[size_t(b.current)].ctx, &b.scheduler);
}

// Fails the launch from inside the running fiber, which is never resumed.
[[noreturn]] void fail_here(const std::string& message) {
  Block& b = this_block();
  fail_block(b, where(b, b.current) + ": " + message);
  yield();
  std::abort();
}

void set_runnable(Block& b, int i) {
  Fiber& f = b.fibers[size_t(i)];
  f.state = kRunnable;
  f.wait = kNone;
  b.runnable[i >> 6] |= uint64_t(1) << (i & 63);
}

int pick(Block& b) {
  constexpr int words = kMaxBlockThreads / 64;
  switch (b.launch->order) {
    case 1:
      for (int w = words - 1; w >= 0; --w)
        if (b.runnable[w]) return w * 64 + 63 - __builtin_clzll(b.runnable[w]);
      return -1;
    case 2: {
      int total = 0;
      for (int w = 0; w < words; ++w) total += __builtin_popcountll(b.runnable[w]);
      if (total == 0) return -1;
      int k = int(b.rng() % uint64_t(total));
      for (int w = 0; w < words; ++w) {
        const int n = __builtin_popcountll(b.runnable[w]);
        if (k >= n) {
          k -= n;
          continue;
        }
        uint64_t bits = b.runnable[w];
        while (k-- > 0) bits &= bits - 1;
        return w * 64 + __builtin_ctzll(bits);
      }
      return -1;
    }
    default:
      for (int w = 0; w < words; ++w)
        if (b.runnable[w]) return w * 64 + __builtin_ctzll(b.runnable[w]);
      return -1;
  }
}

void release_sync(Block& b) {
  for (int i = 0; i < b.threads; ++i)
    if (b.fibers[size_t(i)].state == kWaiting && b.fibers[size_t(i)].wait == kSync) set_runnable(b, i);
  b.at_sync = 0;
}

const char* mode_name(const WarpRequest& r) {
  static const char* shfl[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
  static const char* vote[] = {"__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
  return r.vote ? vote[r.mode & 3] : shfl[r.mode & 3];
}

// The source lane of `lane` for a shuffle (PTX ISA, shfl.sync: b = lane / delta / lane mask, c = the
// clamp value in bits 0-4 and the segment mask in bits 8-12). Returns `lane` itself when out of range.
int shuffle_source(int mode, int lane, int b, int c) {
  const int bval = b & 0x1f, cval = c & 0x1f, segmask = (c >> 8) & 0x1f;
  const int max_lane = (lane & segmask) | (cval & ~segmask);
  const int min_lane = lane & segmask;
  int j = lane;
  bool in_range = false;
  switch (mode) {
    case kShflUp: j = lane - bval; in_range = j >= max_lane; break;
    case kShflDown: j = lane + bval; in_range = j <= max_lane; break;
    case kShflBfly: j = lane ^ bval; in_range = j <= max_lane; break;
    default: j = min_lane | (bval & ~segmask); in_range = j <= max_lane; break;
  }
  return in_range ? j : lane;
}

void complete_warp_op(Block& b, Warp& w, int warp, unsigned mask) {
  const WarpRequest& first = w.req[__builtin_ctz(mask)];
  unsigned ballot = 0;
  if (first.vote)
    for (unsigned m = mask; m; m &= m - 1)
      if (w.req[__builtin_ctz(m)].bits) ballot |= 1u << __builtin_ctz(m);
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    const WarpRequest& r = w.req[lane];
    if (r.vote) {
      w.out[lane] = r.mode == kVoteAny ? (ballot != 0) : r.mode == kVoteAll ? (ballot == mask) : ballot;
    } else {
      const int src = shuffle_source(r.mode, lane, r.b, r.c);
      if (!((mask >> src) & 1u)) {
        fail_block(b, where(b, warp * 32 + lane) +
                          format(": %s with mask 0x%08x reads lane %d, outside the mask (undefined)", mode_name(r),
                                 mask, src));
        return;
      }
      w.out[lane] = w.req[src].bits;
    }
  }
  w.arrived &= ~mask;
  for (unsigned m = mask; m; m &= m - 1) set_runnable(b, warp * 32 + __builtin_ctz(m));
}

uint64_t warp_op(bool vote, int mode, unsigned mask, uint64_t bits, int size, int bv, int c) {
  Block& b = this_block();
  Fiber& f = b.fibers[size_t(b.current)];
  Warp& w = b.warps[size_t(f.warp)];
  WarpRequest r;
  r.vote = vote;
  r.mode = mode;
  r.mask = mask;
  r.bits = bits;
  r.size = size;
  r.b = bv;
  r.c = c;
  const unsigned me = 1u << f.lane;
  if (!(mask & me))
    fail_here(format("%s with mask 0x%08x does not name the calling lane %d", mode_name(r), mask, f.lane));
  if (mask & ~w.members)
    fail_here(format("%s with mask 0x%08x names lanes 0x%08x that do not exist (blockDim %u)", mode_name(r), mask,
                     mask & ~w.members, b.threads));
  if (mask & w.exited)
    fail_here(format("%s with mask 0x%08x names lanes 0x%08x that have exited", mode_name(r), mask, mask & w.exited));
  for (unsigned a = w.arrived; a; a &= a - 1) {
    const int lane = __builtin_ctz(a);
    const WarpRequest& o = w.req[lane];
    const bool together = (o.mask & me) || ((mask >> lane) & 1u);
    if (together && (o.mask != mask || o.vote != vote || o.mode != mode || o.size != size || o.c != c))
      fail_here(format("%s with mask 0x%08x (width code 0x%x) while lane %d waits at %s with mask 0x%08x (width code "
                       "0x%x): divergent warp-synchronous calls",
                       mode_name(r), mask, c, lane, mode_name(o), o.mask, o.c));
  }
  w.req[f.lane] = r;
  w.arrived |= me;
  f.state = kWaiting;
  f.wait = kWarp;
  if ((w.arrived & mask) == mask) complete_warp_op(b, w, f.warp, mask);
  yield();
  return w.out[f.lane];
}

void on_exit(Block& b, int i) {
  Fiber& f = b.fibers[size_t(i)];
  f.state = kDone;
  --b.live;
  Warp& w = b.warps[size_t(f.warp)];
  const unsigned me = 1u << f.lane;
  w.exited |= me;
  for (unsigned a = w.arrived; a; a &= a - 1) {
    const int lane = __builtin_ctz(a);
    if (w.req[lane].mask & me) {
      fail_block(b, where(b, f.warp * 32 + lane) + format(": %s with mask 0x%08x waits for lane %d, which exited",
                                                          mode_name(w.req[lane]), w.req[lane].mask, f.lane));
      return;
    }
  }
  if (b.at_sync > 0 && b.at_sync == b.live) release_sync(b);
  Cluster& c = *b.cluster;
  std::lock_guard<std::mutex> lock(c.mutex);
  --c.expected;
  if (c.arrived > 0 && c.arrived == c.expected) c.advance();
}

std::string describe_waits(const Block& b) {
  int sync = 0, warp = 0, cluster = 0, done = 0;
  std::string warps;
  for (int i = 0; i < b.threads; ++i) {
    const Fiber& f = b.fibers[size_t(i)];
    if (f.state == kDone) ++done;
    else if (f.wait == kSync) ++sync;
    else if (f.wait == kCluster) ++cluster;
    else if (f.wait == kWarp) ++warp;
  }
  for (std::size_t k = 0; k < b.warps.size() && warps.size() < 400; ++k) {
    const Warp& w = b.warps[k];
    if (!w.arrived) continue;
    const WarpRequest& r = w.req[__builtin_ctz(w.arrived)];
    warps += format("; warp %zu: lanes 0x%08x wait at %s with mask 0x%08x", k, w.arrived, mode_name(r), r.mask);
  }
  return format("%d threads wait at __syncthreads, %d at warp-synchronous calls, %d at the cluster barrier, %d exited",
                sync, warp, cluster, done) + warps;
}

// No fiber of the block can run but some wait at the cluster barrier: wait (as an OS thread) for the
// phase to complete. False when the launch failed or the whole cluster is stuck (a deadlock).
bool stall_on_cluster(Block& b) {
  Cluster& c = *b.cluster;
  std::unique_lock<std::mutex> lock(c.mutex);
  for (;;) {
    if (c.failed || b.launch->failed) {
      b.aborted = true;
      return false;
    }
    bool any = false;
    for (int i = 0; i < b.threads; ++i) {
      Fiber& f = b.fibers[size_t(i)];
      if (f.state == kWaiting && f.wait == kCluster && f.arrive_phase < c.phase) {
        b.waited_phase = std::max(b.waited_phase, f.arrive_phase + 1);
        set_runnable(b, i);
        any = true;
      }
    }
    if (any) {
      c.stalled_at[size_t(b.rank)] = Cluster::kNotStalled;
      return true;
    }
    c.stalled_at[size_t(b.rank)] = c.phase;
    if (c.deadlocked()) {
      b.launch->fail(format("deadlock in the cluster of block (%u,%u,%u) (rank %d): every block waits; barrier phase "
                            "%llu has %ld of %ld arrivals; this block: ",
                            b.idx.x, b.idx.y, b.idx.z, b.rank, (unsigned long long)c.phase, c.arrived, c.expected) +
                     describe_waits(b));
      c.failed = true;
      c.cv.notify_all();
      b.aborted = true;
      return false;
    }
    c.cv.wait(lock);
  }
}

void fiber_main() {
  Block& b = *running;
  b.launch->body();
  b.fibers[size_t(b.current)].state = kDone;  // returns to the scheduler through uc_link
}

// ---- crash reports --------------------------------------------------------------------------------------
thread_local const Block* crash_block = nullptr;
char crash_context[256] = "";  // what the host was running (cbemu_set_context), for the report

void on_fault(int sig, siginfo_t* info, void*) {
  char msg[512];
  int n = 0;
  const Block* b = crash_block;
  if (b != nullptr && b->current >= 0) {
    const uint3 t = b->fibers[size_t(b->current)].tid;
    n = std::snprintf(msg, sizeof msg,
                      "cbemu: signal %d (invalid memory access at %p) in block (%u,%u,%u) thread (%u,%u,%u): a "
                      "kernel read or wrote outside its buffers, or a fiber stack overflowed\n",
                      sig, info->si_addr, b->idx.x, b->idx.y, b->idx.z, t.x, t.y, t.z);
  } else {
    n = std::snprintf(msg, sizeof msg, "cbemu: signal %d (invalid memory access at %p) outside a kernel\n", sig,
                      info->si_addr);
  }
  if (n > 0) (void)!write(2, msg, size_t(std::min<int>(n, int(sizeof msg) - 1)));
  if (crash_context[0]) {
    n = std::snprintf(msg, sizeof msg, "cbemu: while running %s\n", crash_context);
    if (n > 0) (void)!write(2, msg, size_t(std::min<int>(n, int(sizeof msg) - 1)));
  }
  _exit(70);
}

std::atomic<bool> fault_handler_installed{false};

void prepare_thread_for_faults() {
  if (!fault_handler_installed.load()) return;
  thread_local std::vector<char> alt(64 * 1024);
  thread_local bool done = false;
  if (done) return;
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  done = true;
}

// ---- running a block and a launch -------------------------------------------------------------------------
uint3 block_index(const LaunchSpec& s, long long linear) {
  uint3 i;
  i.x = unsigned(linear % s.grid.x);
  i.y = unsigned((linear / s.grid.x) % s.grid.y);
  i.z = unsigned(linear / (static_cast<long long>(s.grid.x) * s.grid.y));
  return i;
}

void run_block(Launch& l, Cluster& c, int rank, uint3 idx) {
  prepare_thread_for_faults();
  Block b;
  b.launch = &l;
  b.cluster = &c;
  b.rank = rank;
  b.idx = idx;
  const dim3 bd = l.spec.block;
  b.threads = int(bd.x * bd.y * bd.z);
  b.rng.seed(l.seed * 0x9E3779B97F4A7C15ULL + ((uint64_t(idx.z) << 42) ^ (uint64_t(idx.y) << 21) ^ idx.x));
  b.fibers.resize(size_t(b.threads));
  b.warps.resize(size_t((b.threads + 31) / 32));
  b.live = b.threads;
  running = &b;
  crash_block = &b;
  ::blockIdx = idx;
  ::blockDim = bd;
  ::gridDim = l.spec.grid;
  {
    std::unique_lock<std::mutex> lock(c.mutex);
    c.anchors[size_t(rank)] = &tls_anchor;
    ++c.started;
    c.cv.notify_all();
    c.cv.wait(lock, [&] { return c.started == c.size; });  // every anchor known before any mapping
  }
  for (int i = 0; i < b.threads; ++i) {
    Fiber& f = b.fibers[size_t(i)];
    f.tid.x = unsigned(i) % bd.x;
    f.tid.y = (unsigned(i) / bd.x) % bd.y;
    f.tid.z = unsigned(i) / (bd.x * bd.y);
    f.warp = i / 32;
    f.lane = i % 32;
    b.warps[size_t(f.warp)].members |= 1u << f.lane;
    f.stack = stacks.get();
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack + page_size();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.scheduler;
    makecontext(&f.ctx, fiber_main, 0);
    set_runnable(b, i);
  }
  for (;;) {
    if (l.failed) {
      b.aborted = true;
      break;
    }
    const int i = pick(b);
    if (i < 0) {
      if (b.live == 0) break;
      bool cluster_waiters = false;
      for (int k = 0; k < b.threads && !cluster_waiters; ++k)
        cluster_waiters = b.fibers[size_t(k)].state == kWaiting && b.fibers[size_t(k)].wait == kCluster;
      if (cluster_waiters) {
        if (!stall_on_cluster(b)) break;
        continue;
      }
      fail_block(b, format("deadlock in block (%u,%u,%u): no thread can run; ", idx.x, idx.y, idx.z) + describe_waits(b));
      break;
    }
    b.runnable[i >> 6] &= ~(uint64_t(1) << (i & 63));
    b.current = i;
    ::threadIdx = b.fibers[size_t(i)].tid;
    swapcontext(&b.scheduler, &b.fibers[size_t(i)].ctx);
    if (b.aborted) break;
    if (b.fibers[size_t(i)].state == kDone) on_exit(b, i);
    if (b.aborted) break;
  }
  b.current = -1;
  for (Fiber& f : b.fibers) stacks.put(f.stack);
  {
    std::unique_lock<std::mutex> lock(c.mutex);
    c.exited[size_t(rank)] = true;
    if (!b.aborted && !l.failed) {
      for (int from = 0; from < c.size; ++from) {
        const long long m = c.mapped_at[size_t(rank)][size_t(from)];
        if (from == rank || m < 0 || b.waited_phase >= uint64_t(m) + 1) continue;
        l.fail(format("block (%u,%u,%u) (cluster rank %d) exited while cluster rank %d may still read its shared "
                      "memory: rank %d mapped it after %lld barrier arrival(s) and this block never waited for the "
                      "barrier phase that follows (distributed shared memory must outlive its readers)",
                      idx.x, idx.y, idx.z, rank, from, from, m));
        c.failed = true;
        break;
      }
    }
    ++c.finished;
    c.cv.notify_all();
    c.cv.wait(lock, [&] { return c.finished == c.size; });  // this thread's shared memory outlives its peers
  }
  running = nullptr;
  crash_block = nullptr;
}

std::string validate(const LaunchSpec& s, int device) {
  const long long threads = static_cast<long long>(s.block.x) * s.block.y * s.block.z;
  if (threads < 1 || threads > kMaxBlockThreads || s.block.x > 1024 || s.block.y > 1024 || s.block.z > 64)
    return format("block (%u,%u,%u) is outside the limits (1..1024 threads, z <= 64)", s.block.x, s.block.y, s.block.z);
  if (s.grid.x < 1 || s.grid.x > 2147483647u || s.grid.y < 1 || s.grid.y > 65535 || s.grid.z < 1 || s.grid.z > 65535)
    return format("grid (%u,%u,%u) is outside the limits (x 1..2^31-1, y and z 1..65535)", s.grid.x, s.grid.y,
                  s.grid.z);
  if (s.dynamic_smem > kSharedLimit)
    return format("%zu bytes of dynamic shared memory exceed 48 KiB (no opt-in attribute is emulated)", s.dynamic_smem);
  if (s.cluster > 0) {
    const Device& d = devices[device];
    if (d.major < 9) return format("a cluster launch on a device of compute capability %d.%d", d.major, d.minor);
    if (s.cluster > unsigned(kPortableCluster))
      return format("cluster of %u blocks exceeds the portable size 8", s.cluster);
    if (s.grid.x % s.cluster != 0) return format("grid x %u is not a multiple of the cluster size %u", s.grid.x, s.cluster);
    if (s.cluster > unsigned(d.max_cluster))
      return format("a cluster of %u blocks cannot be resident on this device (at most %d)", s.cluster, d.max_cluster);
  }
  return "";
}

}  // namespace

// ---- device-side entry points -------------------------------------------------------------------------------
void syncthreads() {
  Block& b = this_block();
  b.spins = 0;
  Fiber& f = b.fibers[size_t(b.current)];
  f.state = kWaiting;
  f.wait = kSync;
  if (++b.at_sync == b.live) release_sync(b);
  yield();
}

void trap() { fail_here("__trap() executed"); }

void atomic_winner() {
  const int us = winner_delay_us.load();
  Launch& l = *this_block().launch;
  const dim3 g = l.spec.grid;
  // once per launch (the first counter's first value: the ticket), and never alone in its grid
  if (us > 0 && static_cast<long long>(g.x) * g.y * g.z > 1 && !l.winner_delayed.exchange(true))
    std::this_thread::sleep_for(std::chrono::microseconds(us));
}

void spin_wait(unsigned /*ns*/) {
  Block& b = this_block();
  if (b.launch->failed) fail_here("abandoned while spinning on another block: the launch failed");
  const auto now = std::chrono::steady_clock::now();
  if (b.spins++ == 0) b.spin_since = now;
  if (now - b.spin_since > std::chrono::seconds(60))
    fail_here("spun for 60 s on memory no other block released (a grid-wide dependency that never resolves)");
  std::this_thread::yield();
}

uint64_t shuffle(int mode, unsigned mask, uint64_t bits, int size, int b, int c) {
  return warp_op(false, mode, mask, bits, size, b, c);
}

unsigned vote(int mode, unsigned mask, int predicate) {
  return unsigned(warp_op(true, mode, mask, predicate != 0, 4, 0, 0));
}

void shared_var(void* addr, std::size_t bytes, const char* name) {
  Block& b = this_block();
  char* p = static_cast<char*>(addr);
  for (const auto& s : b.shared)
    if (s.first == p) return;
  b.shared.emplace_back(p, bytes);
  b.shared_bytes += bytes;
  if (b.shared_bytes > kSharedLimit)
    fail_here(format("__shared__ %s brings the block's static shared memory to %zu bytes, above 48 KiB", name,
                     b.shared_bytes));
  std::memset(p, 0xff, bytes);  // never-written shared memory reads as NaN / -1
}

void launch_bounds(long max_threads, long /*min_blocks*/) {
  Block& b = this_block();
  if (b.bounds_checked) return;
  b.bounds_checked = true;
  if (b.threads > max_threads)
    fail_here(format("a block of %d threads exceeds the kernel's __launch_bounds__(%ld): the launch fails on a GPU",
                     b.threads, max_threads));
}

void cluster_arrive() {
  Block& b = this_block();
  if (devices[b.launch->device].major < 9) fail_here("cluster barrier on a device without clusters");
  Fiber& f = b.fibers[size_t(b.current)];
  if (f.pending_wait) fail_here("cluster barrier_arrive twice without barrier_wait in between");
  Cluster& c = *b.cluster;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    f.pending_wait = true;
    f.arrive_phase = c.phase;
    ++f.arrivals;
    if (++c.arrived == c.expected) c.advance();
  }
  set_runnable(b, b.current);  // a switch point, not a wait
  yield();
}

void cluster_wait() {
  Block& b = this_block();
  Fiber& f = b.fibers[size_t(b.current)];
  if (!f.pending_wait) fail_here("cluster barrier_wait without a barrier_arrive before it");
  f.pending_wait = false;
  Cluster& c = *b.cluster;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.phase > f.arrive_phase) {
      b.waited_phase = std::max(b.waited_phase, f.arrive_phase + 1);
      set_runnable(b, b.current);
    } else {
      f.state = kWaiting;
      f.wait = kCluster;
    }
  }
  yield();
}

void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

void* map_shared_rank(void* addr, std::size_t bytes, int rank) {
  Block& b = this_block();
  Cluster& c = *b.cluster;
  if (rank < 0 || rank >= c.size) fail_here(format("map_shared_rank to rank %d of a cluster of %d", rank, c.size));
  char* p = static_cast<char*>(addr);
  bool inside = false;
  for (const auto& s : b.shared) inside = inside || (p >= s.first && p + bytes <= s.first + s.second);
  if (!inside) fail_here(format("map_shared_rank of %p, which is not a __shared__ variable of this block", addr));
  bool gone = false;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    gone = c.exited[size_t(rank)];
    if (!gone && rank != b.rank) {
      long long& m = c.mapped_at[size_t(rank)][size_t(b.rank)];
      m = std::max(m, b.fibers[size_t(b.current)].arrivals);
    }
  }
  if (gone) fail_here(format("map_shared_rank to cluster rank %d, which has exited: its shared memory is gone", rank));
  return c.anchors[size_t(rank)] + (p - &tls_anchor);
}

unsigned cluster_block_rank() { return unsigned(this_block().rank); }
unsigned cluster_num_blocks() { return unsigned(this_block().cluster->size); }

// ---- launches -------------------------------------------------------------------------------------------------
cudaError_t launch_ex_spec(const cudaLaunchConfig_t* config, LaunchSpec& out) {
  if (config == nullptr) return last_error = cudaErrorInvalidValue;
  out.grid = config->gridDim;
  out.block = config->blockDim;
  out.dynamic_smem = config->dynamicSmemBytes;
  out.stream = config->stream;
  for (unsigned k = 0; k < config->numAttrs; ++k) {
    const cudaLaunchAttribute& a = config->attrs[k];
    if (a.id == cudaLaunchAttributeClusterDimension && a.val.clusterDim.y == 1 && a.val.clusterDim.z == 1) {
      out.cluster = a.val.clusterDim.x;
      continue;
    }
    record_failure(format("launch refused: launch attribute %d is not emulated", int(a.id)));
    return last_error = cudaErrorNotSupported;
  }
  return cudaSuccess;
}

cudaError_t run_launch(const LaunchSpec& spec, std::function<void()> body) {
  const int device = current_device.load();
  const std::string why = validate(spec, device);
  if (!why.empty()) {
    ++n_failures;
    record_failure("launch refused: " + why);
    return last_error = spec.cluster > 0 && why.find("cluster") != std::string::npos ? cudaErrorInvalidClusterSize
                                                                                      : cudaErrorInvalidConfiguration;
  }
  const long long launch_number = ++n_launches;
  Launch l;
  l.spec = spec;
  l.body = std::move(body);
  l.cluster = spec.cluster > 0 ? spec.cluster : 1;
  l.device = device;
  l.order = fiber_order.load();
  l.seed = order_seed.load();
  const long long blocks = static_cast<long long>(spec.grid.x) * spec.grid.y * spec.grid.z;
  const long long units = blocks / l.cluster;
  const long threads_per_block = long(spec.block.x * spec.block.y * spec.block.z);
  std::atomic<long long> next{0};
  auto work = [&]() {
    for (long long u; (u = next++) < units && !l.failed;) {
      Cluster c(int(l.cluster), threads_per_block);
      if (l.cluster == 1) {
        run_block(l, c, 0, block_index(spec, u));
        continue;
      }
      std::vector<std::thread> peers;
      for (unsigned r = 0; r < l.cluster; ++r)
        peers.emplace_back(run_block, std::ref(l), std::ref(c), int(r), block_index(spec, u * l.cluster + r));
      for (std::thread& t : peers) t.join();
    }
  };
  int workers = worker_threads.load();
  if (workers <= 0) workers = int(std::max(1u, std::min(4u, std::thread::hardware_concurrency())));
  const int n = int(std::min<long long>(workers, units));
  std::vector<std::thread> pool;
  for (int k = 0; k < n; ++k) pool.emplace_back(work);
  for (std::thread& t : pool) t.join();
  if (l.failed) {
    ++n_failures;
    record_failure(format("launch #%lld (grid %u,%u,%u block %u,%u,%u cluster %u) failed: ", launch_number,
                          spec.grid.x, spec.grid.y, spec.grid.z, spec.block.x, spec.block.y, spec.block.z, l.cluster) +
                   l.message);
    return last_error = cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

}  // namespace cbemu

// ---- the CUDA runtime calls the kernels' host code makes, with CUDA's signatures ---------------------------
using namespace cbemu;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidClusterSize: return "invalid cluster size";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "cuda error (emulated)";
  }
}

cudaError_t cudaGetDevice(int* device) {
  *device = current_device.load();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  note_query();
  if (device < 0 || device >= kMaxDevices) return last_error = cudaErrorInvalidDevice;
  const Device& d = devices[device];
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; break;
    case cudaDevAttrMultiProcessorCount: *value = d.sms; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxBlockThreads; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(kSharedLimit); break;
    case cudaDevAttrClusterLaunch: *value = d.major >= 9; break;
    default: return last_error = cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  note_query();
  if (attr == nullptr || func == nullptr) return last_error = cudaErrorInvalidDeviceFunction;
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = kMaxBlockThreads;
  attr->ptxVersion = attr->binaryVersion = CBEMU_ARCH / 10;  // the architecture the kernels were built for
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  void* capturing = capturing_stream.load();
  *status = capturing != nullptr && static_cast<void*>(stream) == capturing ? cudaStreamCaptureStatusActive
                                                                              : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode* mode) {
  std::swap(*mode, capture_mode);
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* func, const cudaLaunchConfig_t* config) {
  note_query();
  if (func == nullptr || config == nullptr) return last_error = cudaErrorInvalidValue;
  LaunchSpec s;
  const cudaError_t err = launch_ex_spec(config, s);
  if (err != cudaSuccess) return err;
  const Device& d = devices[current_device.load()];
  const unsigned n = s.cluster > 0 ? s.cluster : 1;
  *clusters = d.major >= 9 && n <= unsigned(d.max_cluster) && s.block.x * s.block.y * s.block.z <= 1024u ? d.sms / int(n)
                                                                                                         : 0;
  return cudaSuccess;
}

// ---- host-side control --------------------------------------------------------------------------------------
void cbemu_set_order(int order, unsigned long long seed) {
  fiber_order = order;
  order_seed = seed;
}

void cbemu_set_device(int device, int major, int minor, int sms, int max_cluster) {
  if (device < 0 || device >= kMaxDevices) return;
  devices[device] = Device{major, minor, sms, max_cluster};
}

void cbemu_set_current_device(int device) {
  if (device >= 0 && device < kMaxDevices) current_device = device;
}

void cbemu_set_capturing_stream(void* stream) { capturing_stream = stream; }
void cbemu_set_workers(int workers) { worker_threads = workers; }
void cbemu_set_winner_delay(int microseconds) { winner_delay_us = microseconds; }
long long cbemu_launch_count() { return n_launches.load(); }
long long cbemu_failure_count() { return n_failures.load(); }
long long cbemu_capture_violations() { return n_capture_violations.load(); }

void cbemu_reset_counters() {
  n_launches = 0;
  n_failures = 0;
  n_capture_violations = 0;
  std::lock_guard<std::mutex> lock(failure_mutex);
  last_failure.clear();
}

const char* cbemu_last_failure() {
  thread_local std::string copy;
  std::lock_guard<std::mutex> lock(failure_mutex);
  copy = last_failure;
  return copy.c_str();
}

void cbemu_set_context(const char* what) {
  std::snprintf(crash_context, sizeof crash_context, "%s", what ? what : "");
}

// Reports an invalid memory access of a kernel (naming its block and thread) and exits with status 70.
void cbemu_install_fault_handler() {
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
  fault_handler_installed = true;
}

namespace {
struct Allocation {
  char* base;
  std::size_t mapped;
  char* start;
  std::size_t bytes;
};
std::mutex alloc_mutex;
std::map<void*, Allocation> allocations;
constexpr unsigned char kCanary = 0xa5;
}  // namespace

void* cbemu_alloc(std::size_t bytes, int offset) {
  const std::size_t page = page_size();
  const std::size_t data = (bytes + 64 + page - 1) / page * page;
  void* p = mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  char* base = static_cast<char*>(p);
  char* guard = base + data;
  mprotect(guard, page, PROT_NONE);
  const uintptr_t latest = reinterpret_cast<uintptr_t>(guard) - bytes;
  const uintptr_t want = uintptr_t(offset & 15);
  char* start = reinterpret_cast<char*>(latest - ((latest - want) & 15u));
  std::memset(base, kCanary, data);
  std::lock_guard<std::mutex> lock(alloc_mutex);
  allocations[start] = Allocation{base, data + page, start, bytes};
  return start;
}

int cbemu_canaries_intact(void* p) {
  std::lock_guard<std::mutex> lock(alloc_mutex);
  const auto it = allocations.find(p);
  if (it == allocations.end()) return 0;
  const Allocation& a = it->second;
  const std::size_t page = page_size();
  for (char* q = a.base; q < a.start; ++q)
    if (static_cast<unsigned char>(*q) != kCanary) return 0;
  for (char* q = a.start + a.bytes; q < a.base + a.mapped - page; ++q)
    if (static_cast<unsigned char>(*q) != kCanary) return 0;
  return 1;
}

void cbemu_free(void* p) {
  std::lock_guard<std::mutex> lock(alloc_mutex);
  const auto it = allocations.find(p);
  if (it == allocations.end()) return;
  munmap(it->second.base, it->second.mapped);
  allocations.erase(it);
}

}  // extern "C"
