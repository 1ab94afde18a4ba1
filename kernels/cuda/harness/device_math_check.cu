// Host test of the CUDA kernels' device logic, built by nvcc and run by `make cuda-check` (no GPU, no
// CUDA runtime call: every function exercised here is __host__ __device__).
//
// The kernels of softmax_ce.cu and sigmoid_focal.cu are thin: per-thread and per-row functions of
// cb_softmax_rows.cuh / cb_sigmoid_rows.cuh / cb_cuda.cuh joined by shuffles, barriers and the cluster
// exchange. This program runs those same functions thread by thread for every launch path (group,
// block, cluster, split) and stands in for the joins with host reductions in the kernels' order
// (butterfly shuffles, the two-level block tree, rank-ordered cluster folds, chunk-ordered split
// partials). The results are compared with a long-double evaluation of the loss and gradient of
// cbbench/reference.py on the same input values:
//   loss_i = w_y [(1 - eps)(lse(z') - z'_y) + eps (lse(z') - mean_j z'_j)],
//   z'_j   = scale (z_j + logit_offset_j - [j == y] margin_y),
//   grad_j = grad_scale w_y scale (softmax(z')_j - [j == y](1 - eps) - eps / C),
// ignored rows 0, targets outside [0, C) NaN. Special values follow IEEE arithmetic on that formula:
// a -inf logit (a masked class) has probability 0 and a finite loss unless it is the target (+inf) or
// eps > 0 (+inf: the mean of z' is -inf); a row with a NaN or +inf adjusted logit, or with every
// logit -inf, has a NaN loss and gradient (as the reference and the CPU kernels: a masked class is a
// class of probability 0, not a NaN).
//
// Inputs are adversarial: -inf / +inf / NaN at every position of small rows and at every position of
// several threads' shares (first, middle, last threads of the first and last chunk, each chunk's first
// element) of large ones, masked columns through logit_offset, fully masked chunks and rows, C not a
// multiple of the vector width, rows off 16-byte alignment (results must be bitwise the same), extreme
// logits, forward-only calls, every dtype, and the dtype's rounding of the gradient. Also: the launch
// plan covers every C; vector loads never read past a row (the row ends at a PROT_NONE page) and
// stores never write past it; fp16 / bf16 rounding is round-to-nearest-even; the sigmoid / focal
// per-thread terms against the long-double formulas.
//
// Exit status 0 and "device_math_check: OK" when every check passes.
#include <sys/mman.h>
#include <unistd.h>

#include <cfenv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "cb_sigmoid_rows.cuh"
#include "cb_softmax_rows.cuh"

namespace {

using namespace cb;
using LD = long double;

int failures = 0;
long checks = 0;

#define CHECK(cond, ...)                                           \
  do {                                                             \
    ++checks;                                                      \
    if (!(cond)) {                                                 \
      if (failures < 30) {                                         \
        std::printf("  FAIL (%s:%d) ", __FILE__, __LINE__);        \
        std::printf(__VA_ARGS__);                                  \
        std::printf("\n");                                         \
      }                                                            \
      ++failures;                                                  \
    }                                                              \
  } while (0)

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<double>() { return "f64"; }
template <> const char* type_name<__half>() { return "f16"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }

// Unit roundoff of the accumulation type.
template <typename A> LD unit_roundoff() { return LD(std::numeric_limits<A>::epsilon()) / 2; }

// Half the spacing of the storage type T at |x| (0 for float / double: their rounding is the
// accumulation's own, covered by the relative tolerance).
template <typename T> LD half_ulp(LD x);
template <> LD half_ulp<float>(LD) { return 0; }
template <> LD half_ulp<double>(LD) { return 0; }
template <> LD half_ulp<__half>(LD x) {
  const int e = x == 0 ? -100 : std::ilogb(double(std::fabs(x)));
  return std::ldexp(1.0L, (e < -14 ? -14 : e) - 11);
}
template <> LD half_ulp<__nv_bfloat16>(LD x) {
  const int e = x == 0 ? -1000 : std::ilogb(double(std::fabs(x)));
  return std::ldexp(1.0L, (e < -126 ? -126 : e) - 8);
}

template <typename T> T store(LD x) { return from_acc<T>(acc_t<T>(x)); }
template <typename T> LD value(T x) { return LD(to_acc(x)); }

bool same_bits(const void* a, const void* b, std::size_t n) { return std::memcmp(a, b, n) == 0; }

// ---- the joins of the kernels, on the host ----------------------------------------------------------
// __shfl_xor_sync butterfly over groups of G lanes (group_reduce): lane l combines op(own, partner).
template <typename A, typename Op>
std::vector<A> butterfly(std::vector<A> x, int G, Op op) {
  for (int offset = G / 2; offset > 0; offset >>= 1) {
    std::vector<A> y(x.size());
    for (std::size_t l = 0; l < x.size(); ++l) y[l] = op(x[l], x[l ^ std::size_t(offset)]);
    x = y;
  }
  return x;
}

// block_reduce: warp butterflies, then warp 0 reduces the warps' results padded with `identity`.
template <typename A, typename Op>
A block_tree(const std::vector<A>& x, Op op, A identity) {
  const int warps = int(x.size()) / 32;
  std::vector<A> scratch(32, identity);
  for (int w = 0; w < warps; ++w)
    scratch[w] = butterfly(std::vector<A>(x.begin() + 32 * w, x.begin() + 32 * (w + 1)), 32, op)[0];
  return butterfly(scratch, 32, op)[0];
}

// ---- a softmax problem: inputs and outputs in host memory, described by SoftmaxCeArgs -----------------
template <typename T>
struct Problem {
  using A = acc_t<T>;
  int64_t rows, C;
  std::vector<T> zbuf;  // logits, starting `shift` elements into the buffer (shift 1: off 16-byte alignment)
  std::vector<T> gbuf;
  int shift = 0;
  std::vector<int64_t> y;
  std::vector<float> w, off, margin;
  std::vector<A> loss;
  A grad_scale = A(1);
  double scale = 1.0, eps = 0.0;
  bool use_w = true, use_off = true, use_margin = true, need_grad = true, use_grad_scale = true;

  Problem(int64_t rows_, int64_t C_, unsigned seed, LD spread = 3)
      : rows(rows_), C(C_), y(rows_), w(C_), off(C_), margin(C_), loss(rows_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    zbuf.resize(rows * C + 8);
    for (auto& v : zbuf) v = store<T>(LD(normal(rng)) * spread);
    for (int64_t i = 0; i < rows; ++i) y[i] = int64_t(uni(rng) * double(C)) % C;
    for (int64_t j = 0; j < C; ++j) {
      w[j] = float(0.1 + uni(rng));
      off[j] = float(normal(rng));
      margin[j] = float(0.5 * uni(rng));
    }
    grad_scale = A(0.75);
    scale = 1.7;
    eps = 0.1;
  }
  T* z() { return zbuf.data() + shift; }
  const T* z() const { return zbuf.data() + shift; }
  T* grad() { return gbuf.data() + shift; }
  const T* grad() const { return gbuf.data() + shift; }
  void set_shift(int s) {  // moves the logits, keeping their values
    std::vector<T> copy(z(), z() + rows * C);
    shift = s;
    std::memcpy(z(), copy.data(), copy.size() * sizeof(T));
  }
  SoftmaxCeArgs args() {
    gbuf.assign(rows * C + 8, store<T>(LD(12345)));  // a canary the kernels must overwrite (or leave)
    for (auto& l : loss) l = A(-777);
    SoftmaxCeArgs a{};
    a.logits = z();
    a.target = y.data();
    a.weight = use_w ? w.data() : nullptr;
    a.logit_offset = use_off ? off.data() : nullptr;
    a.target_margin = use_margin ? margin.data() : nullptr;
    a.scale = scale;
    a.label_smoothing = eps;
    a.ignore_index = -100;
    a.grad_scale = use_grad_scale ? &grad_scale : nullptr;
    a.loss_rows = loss.data();
    a.grad = need_grad ? grad() : nullptr;
    a.rows = rows;
    a.classes = C;
    return a;
  }
};

// ---- the kernels, thread by thread --------------------------------------------------------------------
// softmax_group_kernel<T, G, NV> for one row.
template <typename T, int G, int NV>
void sim_group_row(const SoftmaxCeArgs& a, int64_t row) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  using namespace softmax;
  struct Regs { A x[NV][V]; };
  const int64_t C = a.classes;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  const int64_t stride = int64_t(G) * V;
  std::vector<Regs> regs(G);
  std::vector<A> m(G), s(G), sum_z(G);
  for (int l = 0; l < G; ++l)
    m[l] = regs_load<T, NV>(regs[l].x, zrow, int64_t(l) * V, stride, C, row_align(zrow), a, r, scale);
  m = butterfly(m, G, MaxOp());
  for (int l = 0; l < G; ++l) regs_exp_sums<T, NV>(regs[l].x, m[l], int64_t(l) * V, stride, C, s[l], sum_z[l]);
  s = butterfly(s, G, SumOp());
  if (eps > A(0)) sum_z = butterfly(sum_z, G, SumOp());
  const A lse = m[0] + cb_log(s[0]);
  static_cast<A*>(a.loss_rows)[row] =
      r.live ? row_loss(r, lse, target_logit<T>(zrow, a, r, scale), sum_z[0], eps, C) : dead_row_value(r);
  if (a.grad == nullptr) return;
  T* grow = static_cast<T*>(a.grad) + row * C;
  for (int l = 0; l < G; ++l) {
    if (!r.live) {
      fill_dead_row<T>(grow, 0, C, int64_t(l) * V, stride, row_align(grow), dead_row_value(r));
    } else {
      regs_store_grad<T, NV>(regs[l].x, grow, int64_t(l) * V, stride, C, row_align(grow), r, A(1) / s[l],
                             grad_coef(a, r, scale), eps, C);
    }
  }
}

// softmax_block_kernel<T, CLUSTER> for one row: `n` CTAs of `threads` threads, CTA k owning
// [k chunk, (k + 1) chunk); n = 1 and chunk = C is the block path.
template <typename T>
void sim_block_row(const SoftmaxCeArgs& a, int64_t row, int n, int threads, int64_t chunk) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  constexpr int NV = softmax::BlockNV<T>::value;
  using namespace softmax;
  struct Regs { A x[NV][V]; };
  const bool cluster = n > 1;
  const int64_t C = a.classes;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  T* grow = a.grad ? static_cast<T*>(a.grad) + row * C : nullptr;
  const int64_t stride = int64_t(threads) * V;
  auto begin_of = [&](int k) { return int64_t(k) * chunk; };
  auto end_of = [&](int k) { return chunk_end(k, chunk, C); };
  if (!r.live) {
    static_cast<A*>(a.loss_rows)[row] = dead_row_value(r);
    if (grow)
      for (int k = 0; k < n; ++k)
        for (int t = 0; t < threads; ++t)
          fill_dead_row<T>(grow, begin_of(k), end_of(k), int64_t(t) * V, stride, row_align(grow), dead_row_value(r));
    return;
  }
  std::vector<Regs> regs(std::size_t(n) * threads);
  std::vector<A> cta_m(n), cta_s(n), cta_z(n), tm(threads), ts(threads), tz(threads);
  for (int k = 0; k < n; ++k) {
    for (int t = 0; t < threads; ++t)
      tm[t] = regs_load<T, NV>(regs[k * threads + t].x, zrow, begin_of(k) + int64_t(t) * V, stride, end_of(k),
                               row_align(zrow), a, r, scale);
    cta_m[k] = block_tree(tm, MaxOp(), neg_inf<A>());
  }
  A m = cta_m[0];
  if (cluster) {  // ClusterExchange::max: every CTA folds the CTAs' values in rank order
    m = neg_inf<A>();
    for (int k = 0; k < n; ++k) m = MaxOp()(m, cta_m[k]);
  }
  for (int k = 0; k < n; ++k) {
    for (int t = 0; t < threads; ++t)
      regs_exp_sums<T, NV>(regs[k * threads + t].x, m, begin_of(k) + int64_t(t) * V, stride, end_of(k), ts[t], tz[t]);
    cta_s[k] = block_tree(ts, SumOp(), A(0));
    cta_z[k] = eps > A(0) ? block_tree(tz, SumOp(), A(0)) : tz[0];
  }
  A s = cta_s[0], sum_z = cta_z[0];
  if (cluster) {
    s = A(0);
    for (int k = 0; k < n; ++k) s += cta_s[k];
    if (eps > A(0)) {
      sum_z = A(0);
      for (int k = 0; k < n; ++k) sum_z += cta_z[k];
    }
  }
  const A lse = m + cb_log(s);
  static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, target_logit<T>(zrow, a, r, scale), sum_z, eps, C);
  if (grow)
    for (int k = 0; k < n; ++k)
      for (int t = 0; t < threads; ++t)
        regs_store_grad<T, NV>(regs[k * threads + t].x, grow, begin_of(k) + int64_t(t) * V, stride, end_of(k),
                               row_align(grow), r, A(1) / s, grad_coef(a, r, scale), eps, C);
}

// softmax_split_stats_kernel + softmax_split_grad_kernel for one row.
template <typename T>
void sim_split_row(const SoftmaxCeArgs& a, int64_t row, const softmax::Plan& p) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  using namespace softmax;
  const int64_t C = a.classes;
  const A scale = A(a.scale), eps = A(a.label_smoothing);
  const Row<A> r = read_row<A>(a, row);
  const T* zrow = static_cast<const T*>(a.logits) + row * C;
  T* grow = a.grad ? static_cast<T*>(a.grad) + row * C : nullptr;
  const int64_t stride = int64_t(kSplitThreads) * V;
  auto begin_of = [&](int c) { return int64_t(c) * p.chunk; };
  auto end_of = [&](int c) { return chunk_end(c, p.chunk, C); };
  if (!r.live) {
    static_cast<A*>(a.loss_rows)[row] = dead_row_value(r);
    if (grow)
      for (int c = 0; c < p.chunks; ++c)
        for (int t = 0; t < kSplitThreads; ++t)
          fill_dead_row<T>(grow, begin_of(c), end_of(c), int64_t(t) * V, stride, row_align(grow), dead_row_value(r));
    return;
  }
  std::vector<A> ws(std::size_t(p.chunks) * 3), tm(kSplitThreads), ts(kSplitThreads), tz(kSplitThreads);
  for (int c = 0; c < p.chunks; ++c) {
    for (int t = 0; t < kSplitThreads; ++t)
      split_thread_stats<T>(zrow, begin_of(c) + int64_t(t) * V, stride, end_of(c), row_align(zrow), a, r, scale, tm[t],
                            ts[t], tz[t]);
    const A bm = block_tree(tm, MaxOp(), neg_inf<A>());
    for (int t = 0; t < kSplitThreads; ++t) ts[t] = online_rescale(ts[t], tm[t], bm);
    ws[3 * c] = bm;
    ws[3 * c + 1] = block_tree(ts, SumOp(), A(0));
    ws[3 * c + 2] = block_tree(tz, SumOp(), A(0));
  }
  const RowStats<A> st = combine_chunks(ws.data(), p.chunks);
  const A lse = st.m + cb_log(st.s);
  static_cast<A*>(a.loss_rows)[row] = row_loss(r, lse, target_logit<T>(zrow, a, r, scale), st.sum_z, eps, C);
  if (grow)
    for (int c = 0; c < p.chunks; ++c)
      for (int t = 0; t < kSplitThreads; ++t)
        split_thread_grad<T>(zrow, grow, begin_of(c) + int64_t(t) * V, stride, end_of(c), row_align(zrow),
                             row_align(grow), a, r, scale, st.m, A(1) / st.s, grad_coef(a, r, scale), eps);
}

template <typename T>
void sim_row(const SoftmaxCeArgs& a, int64_t row, const softmax::Plan& p) {
  using softmax::Kind;
  switch (p.kind) {
    case Kind::group:
      switch (p.g * 100 + p.nv) {
        case 401: return sim_group_row<T, 4, 1>(a, row);
        case 801: return sim_group_row<T, 8, 1>(a, row);
        case 1601: return sim_group_row<T, 16, 1>(a, row);
        case 3201: return sim_group_row<T, 32, 1>(a, row);
        case 3202: return sim_group_row<T, 32, 2>(a, row);
        case 3204: return sim_group_row<T, 32, 4>(a, row);
        case 3208: return sim_group_row<T, 32, 8>(a, row);
        default: CHECK(false, "no group kernel for g=%d nv=%d", p.g, p.nv); return;
      }
    case Kind::block: return sim_block_row<T>(a, row, 1, p.threads, p.chunk);
    case Kind::cluster: return sim_block_row<T>(a, row, p.cluster, p.threads, p.chunk);
    case Kind::split: return sim_split_row<T>(a, row, p);
  }
}

const char* kind_name(softmax::Kind k) {
  switch (k) {
    case softmax::Kind::group: return "group";
    case softmax::Kind::block: return "block";
    case softmax::Kind::cluster: return "cluster";
    case softmax::Kind::split: return "split";
  }
  return "?";
}

// The plans a row of C elements can take: first_plan, and for a cluster candidate also the split
// fallback (a device without clusters, a capture before the probes).
template <typename T>
std::vector<softmax::Plan> plans_for(int64_t C) {
  const softmax::Plan p = softmax::first_plan<T>(C);
  if (p.kind == softmax::Kind::cluster) return {p, softmax::split_plan<T>(C)};
  return {p};
}

// ---- the oracle ----------------------------------------------------------------------------------------
template <typename T>
struct Want {
  std::vector<LD> loss;
  std::vector<LD> grad;
  std::vector<LD> loss_tol;
  std::vector<LD> grad_tol;
};

constexpr LD kTol = 256;  // in units of the accumulation type's roundoff

template <typename T>
Want<T> oracle(const Problem<T>& P, const SoftmaxCeArgs& a) {
  using A = acc_t<T>;
  // Oracle precision: long double for double accumulation, double (29 bits more than float) else.
  using R = typename std::conditional<std::is_same<A, double>::value, LD, double>::type;
  const R u = R(unit_roundoff<A>());
  const int64_t C = P.C;
  const R nan = std::numeric_limits<R>::quiet_NaN(), inf = std::numeric_limits<R>::infinity();
  Want<T> W;
  W.loss.resize(P.rows);
  W.loss_tol.resize(P.rows);
  W.grad.resize(P.rows * C);
  W.grad_tol.resize(P.rows * C);
  std::vector<R> zp(C), e(C);
  for (int64_t i = 0; i < P.rows; ++i) {
    const int64_t y = P.y[i];
    LD* g = &W.grad[i * C];
    LD* gt = &W.grad_tol[i * C];
    for (int64_t j = 0; j < C; ++j) gt[j] = 0;
    if (y == a.ignore_index || y < 0 || y >= C) {
      W.loss[i] = y == a.ignore_index ? 0 : nan;
      W.loss_tol[i] = 0;
      for (int64_t j = 0; j < C; ++j) g[j] = W.loss[i];
      continue;
    }
    const R scale = R(A(P.scale)), eps = R(A(P.eps));
    R zmax_abs = 0, M = -inf;
    bool nan_row = false;
    for (int64_t j = 0; j < C; ++j) {
      const R z = R(value(P.z()[i * C + j]));
      const R o = a.logit_offset ? R(P.off[j]) : 0;
      const R mg = (a.target_margin && j == y) ? R(P.margin[y]) : 0;
      zp[j] = (z + o - mg) * scale;
      if (std::isnan(zp[j]) || zp[j] == inf) nan_row = true;
      if (std::isfinite(zp[j])) zmax_abs = std::fmax(zmax_abs, scale * (std::fabs(z) + std::fabs(o) + mg));
      M = std::fmax(M, zp[j]);
    }
    if (M == -inf) nan_row = true;  // every class masked
    if (nan_row) {
      W.loss[i] = nan;
      W.loss_tol[i] = 0;
      for (int64_t j = 0; j < C; ++j) g[j] = nan;
      continue;
    }
    R S = 0, sum_z = 0;
    for (int64_t j = 0; j < C; ++j) {
      e[j] = std::exp(zp[j] - M);
      S += e[j];
      sum_z += zp[j];
    }
    const R lse = M + std::log(S);
    const R wy = a.weight ? R(P.w[y]) : 1;
    const R nll = lse - zp[y];
    const R smoothed = eps > 0 ? (1 - eps) * nll + eps * (lse - sum_z / R(C)) : nll;
    W.loss[i] = wy * smoothed;
    W.loss_tol[i] = R(kTol) * u * std::fabs(wy) * (zmax_abs + std::fabs(lse) + std::log(R(C)) + 1);
    const R gs = a.grad_scale ? R(P.grad_scale) : 1;
    const R coef = gs * wy * scale;
    for (int64_t j = 0; j < C; ++j) {
      const R p = e[j] / S;
      g[j] = coef * (p - (j == y ? 1 - eps : 0) - eps / R(C));
      gt[j] = R(kTol) * u * std::fabs(coef) * (1 + p * (1 + 2 * zmax_abs)) + R(half_ulp<T>(g[j])) * R(1.001);
    }
  }
  return W;
}

bool close(LD got, LD want, LD tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::isfinite(got) && std::fabs(got - want) <= tol;
}

// Runs the problem through `plan` and compares with the oracle; returns false on the first mismatch.
template <typename T>
bool run_and_check(Problem<T>& P, const softmax::Plan& plan, const char* what) {
  using A = acc_t<T>;
  const SoftmaxCeArgs a = P.args();
  for (int64_t i = 0; i < P.rows; ++i) sim_row<T>(a, i, plan);
  const Want<T> W = oracle(P, a);
  for (int64_t i = 0; i < P.rows; ++i) {
    const LD got = LD(P.loss[i]);
    const bool ok = close(got, W.loss[i], W.loss_tol[i]);
    CHECK(ok, "%s %s C=%" PRId64 " %s: row %" PRId64 " (target %" PRId64 ") loss %.9Lg, want %.9Lg (tol %.3Lg)",
          type_name<T>(), kind_name(plan.kind), P.C, what, i, P.y[i], got, W.loss[i], W.loss_tol[i]);
    if (!ok) return false;
  }
  const T canary = store<T>(LD(12345));
  for (int64_t e = 0; e < P.rows * P.C; ++e) {
    const LD got = value(P.grad()[e]);
    const bool ok = P.need_grad ? close(got, W.grad[e], W.grad_tol[e]) : same_bits(&P.grad()[e], &canary, sizeof(T));
    CHECK(ok, "%s %s C=%" PRId64 " %s: row %" PRId64 " grad[%" PRId64 "] = %.9Lg, want %.9Lg (tol %.3Lg)",
          type_name<T>(), kind_name(plan.kind), P.C, what, e / P.C, e % P.C, got,
          P.need_grad ? W.grad[e] : LD(12345), W.grad_tol[e]);
    if (!ok) return false;
  }
  // nothing written around the rows
  for (int k = 0; k < P.shift; ++k) CHECK(same_bits(&P.gbuf[k], &canary, sizeof(T)), "write before the gradient");
  for (std::size_t k = P.shift + P.rows * P.C; k < P.gbuf.size(); ++k)
    CHECK(same_bits(&P.gbuf[k], &canary, sizeof(T)), "write past the gradient");
  (void)sizeof(A);
  return true;
}

// ---- softmax suites -------------------------------------------------------------------------------------
// Every plan on random rows with every option, aligned and not (bitwise the same), forward-only, without
// options, bad / ignored targets.
template <typename T>
void softmax_random_rows(const std::vector<int64_t>& classes) {
  using A = acc_t<T>;
  for (int64_t C : classes) {
    for (const softmax::Plan& plan : plans_for<T>(C)) {
      const int64_t rows = C <= 2048 ? 6 : 3;
      Problem<T> P(rows, C, unsigned(C * 7 + 1));
      P.y[1] = -100;  // ignored
      if (rows > 3) {
        P.y[2] = C;   // out of range: NaN row
        P.y[3] = -5;
      }
      if (!run_and_check(P, plan, "all options")) continue;
      const std::vector<A> loss0 = P.loss;
      const std::vector<T> grad0(P.grad(), P.grad() + rows * C);
      P.set_shift(1);  // off 16-byte alignment: same bits
      run_and_check(P, plan, "unaligned");
      CHECK(same_bits(loss0.data(), P.loss.data(), rows * sizeof(A)) &&
                same_bits(grad0.data(), P.grad(), rows * C * sizeof(T)),
            "%s %s C=%" PRId64 ": unaligned rows are not bitwise the same", type_name<T>(), kind_name(plan.kind), C);
      P.need_grad = false;
      run_and_check(P, plan, "forward only");
      CHECK(same_bits(loss0.data(), P.loss.data(), rows * sizeof(A)),
            "%s %s C=%" PRId64 ": forward-only loss differs", type_name<T>(), kind_name(plan.kind), C);
      Problem<T> Q(rows, C, unsigned(C * 7 + 2));
      Q.use_w = Q.use_off = Q.use_margin = Q.use_grad_scale = false;
      Q.eps = 0;
      Q.scale = 1;
      run_and_check(Q, plan, "no options");
    }
  }
}

// Positions of a row of C elements that cover, for plan p: every position when C <= 2048; else each
// CTA's / chunk's first and last element, and every element of the first and last thread's share in the
// first and last CTA / chunk (rows up to 65536 elements).
template <typename T>
std::vector<int64_t> special_positions(int64_t C, const softmax::Plan& p) {
  constexpr int V = Vec<T>::size;
  std::vector<int64_t> pos;
  auto add = [&](int64_t j) {
    if (j >= 0 && j < C) pos.push_back(j);
  };
  if (C <= 2048) {
    for (int64_t j = 0; j < C; ++j) add(j);
    return pos;
  }
  const int threads = p.kind == softmax::Kind::split ? softmax::kSplitThreads : p.threads;
  const int64_t chunk = p.chunk, stride = int64_t(threads) * V;
  const int64_t n_chunks = (C + chunk - 1) / chunk;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = c * chunk, end = softmax::chunk_end(c, chunk, C);
    add(begin);
    add(end - 1);
    if ((c != 0 && c != n_chunks - 1) || C > 65536) continue;  // the longest rows: chunk edges only
    for (int t : {0, threads - 1})
      for (int64_t j = begin + int64_t(t) * V; j < end; j += stride)
        for (int v = 0; v < V; ++v) add(j + v);
  }
  return pos;
}

// Rows with many special values at once (C > 2048): the first element of every thread's share in
// every CTA / chunk, or the first k elements of every thread's first vector, are -inf; every such
// thread starts its running max at -inf.
template <typename T>
void softmax_thread_prefixes(int64_t C, const softmax::Plan& p, long& bad) {
  constexpr int V = Vec<T>::size;
  const int threads = p.kind == softmax::Kind::split ? softmax::kSplitThreads : p.threads;
  const int64_t chunk = p.chunk;
  const Problem<T> base(1, C, unsigned(C + 1));
  for (int k = 1; k <= V + 1 && bad == 0; ++k) {
    if (C > 65536 && k != 1 && k != V + 1) continue;
    Problem<T> P = base;
    P.eps = k % 2 ? 0.0 : 0.1;
    for (int64_t begin = 0; begin < C; begin += chunk)
      for (int t = 0; t < threads; ++t)
        for (int v = 0; v < k && v < V; ++v)
          if (begin + int64_t(t) * V + v < C && begin + int64_t(t) * V + v != P.y[0])
            P.z()[begin + int64_t(t) * V + v] = store<T>(-std::numeric_limits<LD>::infinity());
    if (k == V + 1) {  // a thread's whole first vector, through logit_offset (a masked vocabulary)
      for (int64_t j = 0; j < C; ++j)
        if ((j % chunk) % (int64_t(threads) * V) < V && j != P.y[0]) P.off[j] = -std::numeric_limits<float>::infinity();
    }
    char what[80];
    std::snprintf(what, sizeof what, "-inf at the first %d element(s) of every thread", k);
    if (!run_and_check(P, p, what)) ++bad;
  }
}

// One special value at each position, in the logits or (masked columns) in logit_offset, the target
// elsewhere and, once in a while, on it. -inf everywhere; +inf and NaN at every eighth position of rows
// longer than 256.
template <typename T>
void softmax_specials(const std::vector<int64_t>& classes) {
  const LD inf = std::numeric_limits<LD>::infinity();
  const LD specials[] = {-inf, inf, std::numeric_limits<LD>::quiet_NaN()};
  const char* special_names[] = {"-inf", "+inf", "NaN"};
  for (int64_t C : classes) {
    for (const softmax::Plan& plan : plans_for<T>(C)) {
      const std::vector<int64_t> pos = special_positions<T>(C, plan);
      long bad = 0;
      const int64_t rows = C <= 256 ? 2 : 1;
      const Problem<T> base(rows, C, unsigned(C * 5 + 3));
      for (int s = 0; s < 3; ++s) {
        for (std::size_t k = 0; k < pos.size() && bad == 0; ++k) {
          if (s > 0 && C > 256 && k % 8 != 0) continue;
          const int64_t j = pos[k];
          Problem<T> P = base;
          P.eps = (k % 3 == 0) ? 0.1 : 0.0;  // the smoothing sum too
          P.y[0] = (j + 1 + int64_t(k % 5)) % C;
          if (rows > 1) P.y[1] = (k % 7 == 3) ? j : (j + C / 2) % C;
          if (C == 1) P.y[0] = P.y[rows - 1] = 0;
          char what[96];
          if (s == 0 && k % 4 == 1) {  // a masked column: logit_offset_j = -inf for every row
            P.off[j] = -std::numeric_limits<float>::infinity();
            std::snprintf(what, sizeof what, "logit_offset[%" PRId64 "] = -inf", j);
          } else {
            for (int64_t i = 0; i < rows; ++i) P.z()[i * C + j] = store<T>(specials[s]);
            std::snprintf(what, sizeof what, "z[:, %" PRId64 "] = %s", j, special_names[s]);
          }
          if (!run_and_check(P, plan, what)) ++bad;
        }
      }
      if (C > 2048) softmax_thread_prefixes<T>(C, plan, bad);
      std::printf("%-4s %-7s C=%-7" PRId64 " -inf/+inf/NaN at %zu positions%s: %s\n", type_name<T>(),
                  kind_name(plan.kind), C, pos.size(), C > 2048 ? " and every thread's first elements" : "",
                  bad ? "FAILED" : "ok");
    }
  }
}

// The finding of the review: on the split path a row with z[:, 0] = -inf or logit_offset[0] = -inf (a
// masked first class), targets != 0, got a NaN loss and gradient; the loss is finite (no smoothing).
// Also whole chunks and whole rows masked, and one live class among masked ones.
template <typename T>
void softmax_masked(const std::vector<int64_t>& classes) {
  const LD ninf = -std::numeric_limits<LD>::infinity();
  for (int64_t C : classes) {
    for (const softmax::Plan& plan : plans_for<T>(C)) {
      const int64_t chunk = plan.kind == softmax::Kind::split || plan.kind == softmax::Kind::cluster ? plan.chunk : C;
      long bad = 0;
      const int64_t rows = C > 2048 ? 2 : 4;
      if (C > 1) {
        Problem<T> P(rows, C, unsigned(C + 11));
        P.eps = 0;
        for (int64_t i = 0; i < rows; ++i) {
          P.z()[i * C] = store<T>(ninf);
          P.y[i] = 1 + (i * 7919) % (C - 1);
        }
        bad += !run_and_check(P, plan, "z[:, 0] = -inf, targets != 0 (the review's trigger)");
        for (int64_t i = 0; i < rows; ++i) P.z()[i * C] = P.z()[i * C + 1];
        P.off[0] = -std::numeric_limits<float>::infinity();
        bad += !run_and_check(P, plan, "logit_offset[0] = -inf, targets != 0 (the review's trigger)");
        P.eps = 0.1;  // smoothing: the mean of z' is -inf, the loss +inf
        bad += !run_and_check(P, plan, "logit_offset[0] = -inf with label smoothing");
      }
      Problem<T> Q(4, C, unsigned(C + 12));
      Q.eps = 0;
      for (int64_t j = 0; j < (chunk < C ? chunk : C - 1); ++j) Q.z()[j] = store<T>(ninf);  // row 0: first chunk
      for (int64_t j = 0; j < C; ++j) Q.z()[C + j] = store<T>(ninf);                         // row 1: all masked
      for (int64_t j = 0; j < C; ++j)
        if (j != C / 3) Q.z()[2 * C + j] = store<T>(ninf);                                   // row 2: one live class
      Q.y[0] = C - 1;
      Q.y[2] = C / 3;
      bad += !run_and_check(Q, plan, "masked chunk / row / all but one");
      std::printf("%-4s %-7s C=%-7" PRId64 " masked first class / chunk / row: %s\n", type_name<T>(),
                  kind_name(plan.kind), C, bad ? "FAILED" : "ok");
    }
  }
}

// Large logits: the max subtraction must keep every exponential finite.
template <typename T>
void softmax_extremes(const std::vector<int64_t>& classes, LD big) {
  for (int64_t C : classes) {
    for (const softmax::Plan& plan : plans_for<T>(C)) {
      Problem<T> P(3, C, unsigned(C + 13), big);
      P.use_off = P.use_margin = false;
      P.scale = 1;
      run_and_check(P, plan, "extreme logits");
      Problem<T> Q(3, C, unsigned(C + 14), 3);
      Q.scale = 30;  // large scale, as in the LDAM / normface losses
      run_and_check(Q, plan, "scale 30");
    }
  }
}

// The launch plan covers every row: a group<G>xNV holds G * NV vectors; a block <= 512 threads (a
// multiple of 32, none idle by more than a warp) of BlockNV vectors; a cluster <= 8 CTAs of the same,
// chunks of whole vectors, no CTA empty; split chunks of kSplitChunkVecs vectors, none empty.
template <typename T>
void plan_coverage(int64_t max_c) {
  using namespace softmax;
  constexpr int V = Vec<T>::size;
  constexpr int NV = BlockNV<T>::value;
  long bad = 0;
  int kinds = 0;
  for (int64_t C = 1; C <= max_c; C += (C < 20000 ? 1 : 97)) {
    const int64_t nvec = (C + V - 1) / V;
    bool ok = false;
    const Plan p = first_plan<T>(C);
    switch (p.kind) {
      case Kind::group:
        kinds |= 1;
        ok = (p.g == 4 || p.g == 8 || p.g == 16 || p.g == 32) && int64_t(p.g) * p.nv >= nvec &&
             (p.nv == 1 || int64_t(p.g) * (p.nv / 2) < nvec);
        break;
      case Kind::block:
        kinds |= 2;
        ok = p.threads % 32 == 0 && p.threads <= kMaxBlockThreads && int64_t(p.threads) * NV >= nvec &&
             int64_t(p.threads - 32) * NV < nvec && p.chunk == C;
        break;
      case Kind::cluster:
        kinds |= 4;
        ok = p.cluster >= 2 && p.cluster <= kMaxCluster && p.chunk % V == 0 && p.chunk * p.cluster >= C &&
             p.chunk * (p.cluster - 1) < C && p.threads % 32 == 0 && p.threads <= kMaxBlockThreads &&
             int64_t(p.threads) * NV * V >= p.chunk;
        break;
      case Kind::split:
        kinds |= 8;
        ok = true;
        break;
    }
    const Plan s = split_plan<T>(C);
    ok = ok && s.kind == Kind::split && s.chunk == int64_t(kSplitChunkVecs) * V && s.chunks * s.chunk >= C &&
         (s.chunks - 1) * s.chunk < C;
    // the workspace covers the split fallback of every row too long for one block
    const std::size_t ws = workspace_bytes<T>(5, C);
    ok = ok && ((p.kind == Kind::group || p.kind == Kind::block) ? ws == 0
                                                                  : ws == 5 * std::size_t(s.chunks) * 3 * sizeof(acc_t<T>));
    if (!ok && bad++ < 5) std::printf("  %s C=%" PRId64 ": plan does not cover the row\n", type_name<T>(), C);
  }
  CHECK(bad == 0 && kinds == 15, "%s: %ld plans do not cover their rows (kinds seen %d)", type_name<T>(), bad, kinds);
  std::printf("%-4s launch plans for C = 1..%" PRId64 " cover their rows: %s\n", type_name<T>(), max_c,
              bad == 0 && kinds == 15 ? "ok" : "NO");
}

// ---- vector access ---------------------------------------------------------------------------------------
// Rows that end exactly at a PROT_NONE page: a load past the row faults. Every C up to 4 vectors + 3,
// so every start alignment; the vector path (row_align >= 4) and the element path give the same values.
template <typename T>
void vector_access() {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  const long page = sysconf(_SC_PAGESIZE);
  char* mem = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(mem != MAP_FAILED, "mmap");
  if (mem == MAP_FAILED) return;
  CHECK(mprotect(mem + page, page, PROT_NONE) == 0, "mprotect");
  long bad = 0;
  int aligns = 0;
  for (int64_t C = 1; C <= 4 * V + 3; ++C) {
    T* row = reinterpret_cast<T*>(mem + page) - C;
    const int al = row_align(row);
    const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
    const int want_al = addr % 16 == 0 ? 16 : addr % 8 == 0 ? 8 : addr % 4 == 0 ? 4 : 0;
    if (al != want_al) ++bad;
    aligns |= 1 << (al / 4);
    for (int64_t j = 0; j < C; ++j) row[j] = store<T>(LD(j) + 0.5L);
    for (int64_t j = 0; j < C; j += V) {
      A x[V], e[V];
      load_vec<T>(row, j, C, al, A(-9), x);
      load_vec<T>(row, j, C, 0, A(-9), e);
      for (int v = 0; v < V; ++v) {
        const LD want = j + v < C ? LD(j + v) + 0.5L : -9;
        if (LD(x[v]) != want || LD(e[v]) != want) ++bad;
      }
      // store: the in-range part only (the row is followed by the protected page, preceded by canaries)
      for (int v = 0; v < V; ++v) x[v] = A(100 + j + v);
      T* before = row - 1;
      *before = store<T>(LD(-1));
      store_vec<T>(row, j, C, al, x);
      for (int v = 0; v < V && j + v < C; ++v)
        if (value(row[j + v]) != LD(100 + j + v)) ++bad;
      if (value(*before) != -1) ++bad;
    }
  }
  munmap(mem, 2 * page);
  const int want_aligns = sizeof(T) == 2 ? (1 | 2 | 4 | 16) : sizeof(T) == 4 ? (2 | 4 | 16) : (4 | 16);
  CHECK(bad == 0 && aligns == want_aligns, "%s: vector access: %ld wrong values/alignments (alignments seen %x)",
        type_name<T>(), bad, aligns);
  std::printf("%-4s loads / stores at every row alignment and tail, rows ending at a guard page: %s\n",
              type_name<T>(), bad == 0 ? "ok" : "FAILED");
}

// ---- rounding of the storage types -----------------------------------------------------------------------
// Round-to-nearest-even of x to p significant bits, exponent >= emin (subnormals), overflow at max.
LD round_to(LD x, int p, int emin, LD max) {
  if (std::isnan(x) || std::isinf(x) || x == 0) return x;
  const int e = std::ilogb(double(std::fabs(x)));
  const LD quantum = std::ldexp(1.0L, (e < emin ? emin : e) - (p - 1));
  const LD r = std::nearbyint(x / quantum) * quantum;  // the default rounding mode: nearest, ties to even
  const LD overflow = max + std::ldexp(1.0L, std::ilogb(double(max)) - p);  // half an ulp above max
  if (std::fabs(x) >= overflow) return std::copysign(std::numeric_limits<LD>::infinity(), x);
  return r;
}

void rounding() {
  CHECK(std::fegetround() == FE_TONEAREST, "rounding mode");
  long bad16 = 0, bad_bf = 0, n = 0;
  auto check_one = [&](float f) {
    ++n;
    const LD h = value(from_acc<__half>(f)), b = value(from_acc<__nv_bfloat16>(f));
    const LD wh = round_to(f, 11, -14, 65504.0L), wb = round_to(f, 8, -126, LD(3.38953139e38f));
    if (!(std::isnan(wh) ? std::isnan(h) : h == wh)) ++bad16;
    if (!(std::isnan(wb) ? std::isnan(b) : b == wb)) ++bad_bf;
  };
  auto around = [&](float f) {  // f and its float neighbours
    check_one(f);
    check_one(std::nextafter(f, std::numeric_limits<float>::infinity()));
    check_one(std::nextafter(f, -std::numeric_limits<float>::infinity()));
  };
  for (uint32_t bits = 0; bits < 0x7c00u; ++bits) {  // every finite half, the midpoint to the next one
    __half h, hn;
    const uint16_t b0 = uint16_t(bits), b1 = uint16_t(bits + 1);
    std::memcpy(&h, &b0, 2);
    std::memcpy(&hn, &b1, 2);
    const float lo = __half2float(h), hi = __half2float(hn);
    const float mid = float((LD(lo) + LD(hi)) / 2);  // exact: 12 significant bits
    for (float sign : {1.0f, -1.0f}) {
      around(sign * lo);
      around(sign * mid);
    }
  }
  for (uint32_t bits = 0; bits < 0x7f80u; ++bits) {  // every finite bfloat16, the midpoint to the next one
    const float lo = cb_float_from_bits(bits << 16), mid = cb_float_from_bits((bits << 16) | 0x8000u);
    for (float sign : {1.0f, -1.0f}) {
      around(sign * lo);
      around(sign * mid);
    }
  }
  std::mt19937 rng(7);
  for (int k = 0; k < 1000000; ++k) check_one(cb_float_from_bits(rng()));
  for (float f : {65519.99f, 65520.0f, std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    check_one(f);
  CHECK(bad16 == 0 && bad_bf == 0, "rounding to f16: %ld, to bf16: %ld values not round-to-nearest-even", bad16,
        bad_bf);
  std::printf("f16 / bf16 gradient rounding is round-to-nearest-even (%ld values: every value, midpoint and "
              "neighbour, random bits): %s\n", n, bad16 == 0 && bad_bf == 0 ? "ok" : "FAILED");
}

// ---- the split path's running max / sum on its own -------------------------------------------------------
template <typename A>
void online_sequences() {
  using namespace softmax;
  const LD inf = std::numeric_limits<LD>::infinity();
  const LD u = unit_roundoff<A>();
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 5.0);
  long bad = 0;
  for (int n = 1; n <= 70; ++n) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<A> x(n);
      for (auto& v : x) v = A(normal(rng));
      const int kind = trial % 8;  // 0: finite, 1: -inf prefix, 2: all -inf, 3: -inf at random, 4: +inf, 5: NaN
      const int at = int(rng() % n);
      if (kind == 1) for (int i = 0; i <= at; ++i) x[i] = neg_inf<A>();
      if (kind == 2) for (auto& v : x) v = neg_inf<A>();
      if (kind == 3) for (int i = 0; i < n; i += 1 + int(rng() % 3)) x[i] = neg_inf<A>();
      if (kind == 4) x[at] = A(inf);
      if (kind == 5) x[at] = quiet_nan<A>();
      if (kind == 6) x[at] = A(std::ldexp(1.0, std::is_same<A, float>::value ? 100 : 900));  // extreme
      // whole sequence, and two halves merged the way the split path merges (rescale to the larger max)
      A m = neg_inf<A>(), s = A(0);
      for (A v : x) online_update(m, s, v);
      s = online_rescale(s, m, m);  // as the block merge does for a block of one thread
      const int cut = n / 2;
      A m1 = neg_inf<A>(), s1 = A(0), m2 = neg_inf<A>(), s2 = A(0);
      for (int i = 0; i < cut; ++i) online_update(m1, s1, x[i]);
      for (int i = cut; i < n; ++i) online_update(m2, s2, x[i]);
      const A M = MaxOp()(m1, m2);
      const A s12 = online_rescale(s1, m1, M) + online_rescale(s2, m2, M);
      const A part[6] = {m1, s1, A(0), m2, s2, A(0)};
      const RowStats<A> st = combine_chunks(part, 2);
      // want: lse of the sequence in long double (NaN with a NaN or +inf; -inf when all are -inf)
      LD wm = -inf;
      bool nan = false;
      for (A v : x) {
        if (std::isnan(v) || LD(v) == inf) nan = true;
        wm = std::fmax(wm, LD(v));
      }
      LD want;
      if (nan) {
        want = std::numeric_limits<LD>::quiet_NaN();
      } else if (wm == -inf) {
        want = -inf;
      } else {
        LD S = 0;
        for (A v : x) S += std::exp(LD(v) - wm);
        want = wm + std::log(S);
      }
      const LD tol = 64 * u * (std::fabs(want) + 1);
      for (LD got : {LD(m + cb_log(s)), LD(M + cb_log(s12)), LD(st.m + cb_log(st.s))})
        if (!close(got, want, tol)) {
          if (bad++ < 3)
            std::printf("  online (max, sum) of %d values (case %d, at %d): lse %.9Lg, want %.9Lg\n", n, kind, at,
                        got, want);
        }
    }
  }
  CHECK(bad == 0, "%s: online max/sum: %ld wrong", type_name<A>(), bad);
  std::printf("%-4s online max / sum, rescale and chunk merge on sequences with -inf / +inf / NaN: %s\n",
              type_name<A>(), bad == 0 ? "ok" : "FAILED");
}

// ---- sigmoid / focal -------------------------------------------------------------------------------------
template <typename T>
void sigmoid_rows(bool multi_hot, bool focal, LD gamma, LD alpha) {
  using A = acc_t<T>;
  constexpr int V = Vec<T>::size;
  using namespace sigmoid;
  const LD u = unit_roundoff<A>();
  const LD inf = std::numeric_limits<LD>::infinity();
  long bad = 0;
  for (int64_t C : {1, 3, 10, 37, 100, 129, 1000, 4096, 4100, 9001}) {
    const int64_t rows = 5;
    std::mt19937_64 rng(unsigned(C * 31 + multi_hot * 7 + focal));
    std::normal_distribution<double> normal(0.0, 3.0);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::vector<T> z(rows * C + 1), t(multi_hot ? rows * C + 1 : 0), g(rows * C + 1);
    std::vector<int64_t> y(rows);
    std::vector<float> w(C);
    std::vector<A> loss(rows);
    for (auto& v : z) v = store<T>(LD(normal(rng)));
    z[1] = store<T>(LD(std::is_same<T, __half>::value ? 60000 : 1e4));  // extreme logits
    z[2] = store<T>(LD(std::is_same<T, __half>::value ? -60000 : -1e4));
    for (auto& v : t) v = store<T>(LD(uni(rng) < 0.2 ? 1 : uni(rng) < 0.1 ? 0.3 : 0));
    for (auto& v : w) v = float(0.1 + uni(rng));
    for (auto& v : y) v = int64_t(uni(rng) * double(C)) % C;
    y[1] = -100;
    y[2] = C;
    for (int64_t i = 0; i < rows; ++i)  // masked classes (-inf) where the target is 0: a term of 0
      for (int64_t j = 3; j < C; j += 7)
        if (multi_hot ? value(t[1 + i * C + j]) == 0 : j != y[i]) z[1 + i * C + j] = store<T>(-inf);
    const A gs = A(0.5);
    SigmoidFocalArgs a{};
    a.logits = z.data() + 1;  // off alignment: the element / narrow paths too
    a.class_target = multi_hot ? nullptr : y.data();
    a.multi_hot_target = multi_hot ? t.data() + 1 : nullptr;
    a.weight = w.data();
    a.gamma = double(gamma);
    a.alpha = double(alpha);
    a.ignore_index = -100;
    a.focal = focal;
    a.grad_scale = &gs;
    a.loss_rows = loss.data();
    a.grad = g.data() + 1;
    a.rows = rows;
    a.classes = C;
    const int G = lanes_per_row<T>(C);
    const int threads = G ? G : kRowBlock;
    for (int64_t i = 0; i < rows; ++i) {  // sigmoid_group_kernel / sigmoid_block_kernel
      const Row<A> rr = multi_hot ? read_row<true, A>(a, i) : read_row<false, A>(a, i);
      std::vector<A> acc(threads, A(0));
      if (rr.live) {
        for (int l = 0; l < threads; ++l)
          acc[l] = multi_hot ? row_terms<T, true>(a, i, rr, int64_t(l) * V, int64_t(threads) * V)
                             : row_terms<T, false>(a, i, rr, int64_t(l) * V, int64_t(threads) * V);
      } else {
        for (int l = 0; l < threads; ++l)
          fill_row<T>(static_cast<T*>(a.grad) + i * C, C, int64_t(l) * V, int64_t(threads) * V, dead_value(rr));
      }
      const A total = G ? butterfly(acc, G, SumOp())[0] : block_tree(acc, SumOp(), A(0));
      loss[i] = rr.live ? rr.weight * total : dead_value(rr);
    }
    // want: w sum_j alpha_t m_j bce_j with m = exp(-gamma (t z + softplus(-z))), d/dz by the chain rule
    const LD g_eff = focal ? gamma : 0;
    for (int64_t i = 0; i < rows; ++i) {
      const bool ignored = !multi_hot && y[i] == -100, out = !multi_hot && !ignored && (y[i] < 0 || y[i] >= C);
      LD want = 0, mag = 0;
      for (int64_t j = 0; j < C; ++j) {
        const LD zz = value(z[1 + i * C + j]);
        const LD tt = multi_hot ? value(t[1 + i * C + j]) : LD(j == y[i] ? 1 : 0);
        // bce(z, t) = t softplus(-z) + (1 - t) softplus(z), a term with a coefficient of 0 dropped
        const LD l1p = std::log1p(std::exp(-std::fabs(zz)));
        auto bce_of = [&](LD target) {
          return (target != 0 ? target * (l1p + std::fmax(-zz, LD(0))) : 0) +
                 (target != 1 ? (1 - target) * (l1p + std::fmax(zz, LD(0))) : 0);
        };
        const LD bce = bce_of(tt);
        const LD p = 1 / (1 + std::exp(-zz));
        const LD mod = g_eff == 0 ? 1 : std::exp(-g_eff * bce_of(1 - tt));  // (1 - p_t)^gamma; none for 0
        const LD at = alpha < 0 ? 1 : alpha * tt + (1 - alpha) * (1 - tt);
        const LD cw = multi_hot ? LD(w[j]) : (ignored || out ? 0 : LD(w[y[i]]));
        want += multi_hot ? at * cw * mod * bce : at * mod * bce;
        mag += std::fabs(at * (multi_hot ? cw : 1) * mod * bce) + (std::isinf(zz) ? 0 : std::fabs(zz) * at);
        const LD dterm = mod * (p - tt) - g_eff * mod * (p + tt - 1) * bce;
        LD wg = LD(gs) * at * cw * dterm;
        if (ignored) wg = 0;
        if (out) wg = std::numeric_limits<LD>::quiet_NaN();
        const LD got = value(g[1 + i * C + j]);
        const LD tol = kTol * u * LD(gs) * at * std::fabs(cw) * (1 + (std::isinf(zz) ? 0 : std::fabs(zz))) *
                           (1 + g_eff) + half_ulp<T>(wg) * 1.001L;
        if (!close(got, wg, tol) && bad++ < 3)
          std::printf("  %s sigmoid%s C=%" PRId64 " row %" PRId64 " grad[%" PRId64 "] = %.9Lg, want %.9Lg\n",
                      type_name<T>(), multi_hot ? " multi-hot" : "", C, i, j, got, wg);
      }
      if (!multi_hot) want *= (ignored || out) ? 0 : LD(w[y[i]]);
      if (ignored) want = 0;
      if (out) want = std::numeric_limits<LD>::quiet_NaN();
      const LD tol = kTol * u * (mag + 1) * (multi_hot ? 1 : 2);
      if (!close(LD(loss[i]), want, tol) && bad++ < 3)
        std::printf("  %s sigmoid%s C=%" PRId64 " row %" PRId64 ": loss %.9Lg, want %.9Lg\n", type_name<T>(),
                    multi_hot ? " multi-hot" : "", C, i, LD(loss[i]), want);
    }
  }
  CHECK(bad == 0, "%s sigmoid/focal rows wrong", type_name<T>());
  std::printf("%-4s %s%s gamma=%.2Lg alpha=%.2Lg rows (group and block lanes, unaligned, masked): %s\n", type_name<T>(),
              focal ? "focal" : "sigmoid", multi_hot ? " multi-hot" : "", gamma, alpha, bad == 0 ? "ok" : "FAILED");
}

template <typename T>
void softmax_suite(LD big) {
  constexpr int V = Vec<T>::size;
  constexpr int NV = softmax::BlockNV<T>::value;
  const int64_t block_max = int64_t(softmax::kMaxBlockThreads) * NV * V;  // the largest block row
  const int64_t group_max = 256 * V;
  plan_coverage<T>(300000);
  // every plan: group sizes, group/block edge, block, cluster candidates (and their split fallback), split
  const std::vector<int64_t> random_c = {1, 3, 10, V * 4 + 1, 100, group_max, group_max + 1, 1203,
                                         block_max, block_max + 1, 3 * block_max - 5, 8 * block_max + 3};
  softmax_random_rows<T>(random_c);
  softmax_specials<T>({1, 7, 37, group_max, 1203, block_max + 1, 150001});
  softmax_masked<T>({1, 37, 1203, block_max + 1, 150001});
  softmax_extremes<T>({10, 1000, block_max + 1}, big);
  vector_access<T>();
}

}  // namespace

int main() {
  softmax_suite<float>(1e30L);
  softmax_suite<__nv_bfloat16>(1e30L);
  softmax_suite<__half>(6e4L);
  softmax_suite<double>(1e200L);
  online_sequences<float>();
  online_sequences<double>();
  rounding();
  for (bool multi_hot : {false, true}) {
    sigmoid_rows<float>(multi_hot, true, 2.0L, 0.25L);
    sigmoid_rows<__nv_bfloat16>(multi_hot, true, 0.5L, -1.0L);
    sigmoid_rows<__half>(multi_hot, false, 0.0L, -1.0L);
    sigmoid_rows<double>(multi_hot, true, 2.0L, 0.75L);
  }
  if (failures) {
    std::printf("device_math_check: %d of %ld checks FAILED (%.1f s CPU)\n", failures, checks,
                double(std::clock()) / CLOCKS_PER_SEC);
    return 1;
  }
  std::printf("device_math_check: OK (%ld checks, %.1f s CPU)\n", checks, double(std::clock()) / CLOCKS_PER_SEC);
  return 0;
}
