// Host-side check of the torch-free CUDA API, built and run by `make cuda-check` (no GPU needed):
// every launcher links, empty problems launch nothing, and softmax_ce picks the documented path for
// the benchmark's class counts on a device without thread-block clusters (here: none at all).
#include <cstdio>
#include <cstring>

#include "cb_kernels.h"

namespace {

int failures = 0;

void expect_plan(long classes, cb::Dtype dtype, const char* name, const char* want) {
  char got[64];
  cb::softmax_ce_plan(classes, dtype, /*device=*/-1, got, sizeof(got));
  const bool ok = std::strcmp(got, want) == 0;
  std::printf("%-5s C=%-7ld %-14s %s\n", name, classes, got, ok ? "ok" : "UNEXPECTED");
  if (!ok) {
    std::printf("  expected %s\n", want);
    ++failures;
  }
  const bool split = std::strncmp(got, "split", 5) == 0;
  if ((cb::softmax_ce_workspace_bytes(7, classes, dtype, -1) > 0) != split) {
    std::printf("  workspace size disagrees with the plan\n");
    ++failures;
  }
}

// Every plan must cover the whole row: group<G>x<NV> holds G * NV vectors, block<T>x<NV> T * NV
// vectors in at most 512 threads (a multiple of 32), split<k> k chunks of 4096 vectors.
void expect_coverage(long max_classes, cb::Dtype dtype, const char* name, int vec) {
  char got[64];
  long bad = 0;
  for (long c = 1; c <= max_classes; c += (c < 20000 ? 1 : 97)) {
    cb::softmax_ce_plan(c, dtype, -1, got, sizeof(got));
    const long nvec = (c + vec - 1) / vec;
    int a = 0, b = 0;
    bool ok = false;
    if (std::sscanf(got, "group%dx%d", &a, &b) == 2) {
      ok = (a == 4 || a == 8 || a == 16 || a == 32) && long(a) * b >= nvec;
    } else if (std::sscanf(got, "block%dx%d", &a, &b) == 2) {
      ok = a % 32 == 0 && a <= 512 && long(a) * b >= nvec && long(a - 32) * b < nvec;
    } else if (std::sscanf(got, "split%d", &a) == 1) {
      ok = long(a) * 4096 >= nvec && long(a - 1) * 4096 < nvec;
    }
    if (!ok && bad++ < 5) std::printf("%-5s C=%-7ld %s does not cover the row\n", name, c, got);
  }
  std::printf("%-5s plans for C = 1..%ld cover their rows: %s\n", name, max_classes, bad ? "NO" : "ok");
  failures += bad != 0;
}

}  // namespace

int main() {
  using cb::Dtype;
  expect_plan(1, Dtype::f32, "f32", "group4x1");
  expect_plan(10, Dtype::f32, "f32", "group4x1");
  expect_plan(100, Dtype::f32, "f32", "group32x1");
  expect_plan(1000, Dtype::f32, "f32", "group32x8");
  expect_plan(1024, Dtype::f32, "f32", "group32x8");
  expect_plan(1025, Dtype::f32, "f32", "block64x8");
  expect_plan(1203, Dtype::f32, "f32", "block64x8");
  expect_plan(8142, Dtype::f32, "f32", "block256x8");
  expect_plan(16384, Dtype::f32, "f32", "block512x8");
  expect_plan(16385, Dtype::f32, "f32", "split2");      // cluster<2> on sm_90
  expect_plan(131072, Dtype::f32, "f32", "split8");     // cluster<8> on sm_90
  expect_plan(1000, Dtype::bf16, "bf16", "group32x4");
  expect_plan(8142, Dtype::f16, "f16", "block256x4");
  expect_plan(131072, Dtype::bf16, "bf16", "split4");
  expect_plan(1000, Dtype::f64, "f64", "block64x8");
  expect_plan(131072, Dtype::f64, "f64", "split16");

  expect_coverage(300000, Dtype::f32, "f32", 4);
  expect_coverage(300000, Dtype::bf16, "bf16", 8);
  expect_coverage(300000, Dtype::f64, "f64", 2);

  // Nothing to do: no launch, no device needed.
  cb::SoftmaxCeArgs s{};
  s.rows = 0;
  s.classes = 10;
  cb::SigmoidFocalArgs f{};
  f.rows = 0;
  f.classes = 10;
  if (cb::softmax_ce(s, Dtype::f32, -1, nullptr) != cudaSuccess ||
      cb::sigmoid_focal(f, Dtype::bf16, -1, nullptr) != cudaSuccess ||
      cb::scale_in_place(nullptr, 0, Dtype::f16, nullptr, false, -1, nullptr) != cudaSuccess) {
    std::printf("empty launches must succeed without a device\n");
    ++failures;
  }
  std::printf(failures ? "plan_check: %d FAILED\n" : "plan_check: OK\n", failures);
  return failures ? 1 : 0;
}
