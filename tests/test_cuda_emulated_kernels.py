"""`make cuda-emu-check` catches real kernel bugs: each test plants one in a copy of kernels/cuda, builds the
emulator from the copy and runs the check of kernels/cuda/harness/emu/check_kernels.py on the paths the
bug reaches, which must fail; the unmodified copy passes the same run. (`make test` runs the whole check
on the real sources; tests/test_cuda_emulator.py tests the emulator itself.) Skipped without the CUDA
toolkit's headers or g++.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "kernels" / "cuda" / "harness" / "emu"
sys.path.insert(0, str(EMU))

import build_emulator  # noqa: E402


_MISSING = build_emulator.toolchain_missing()

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "toolchain present")]

# the block, cluster and group paths of f32 softmax (1203: block64x8; 16385: cluster2x288; 10: group4x1)
BLOCK = r"softmax_ce \(torch.float32, 1203, 'options'"
CLUSTER = r"softmax_ce \(torch.float32, 16385, 'options'"
GROUP = r"softmax_ce \(torch.float32, (11|65), 'plain'"
DIVISOR = r"loss_divisor \(torch.float(32|64), (7|4099|100003), '(negative|weighted)'"
# calls that compute their divisor inside the loss launch (group and block softmax, group sigmoid, and 9007
# rows: 9 chunks by as many blocks)
FUSED = (r"softmax_ce \(torch.float32, (11|1203), 'options'|sigmoid \(torch.float32, 13, 'options'"
         r"|softmax_ce \(torch.float32, 11, 'many_rows'")
TAILS = r"softmax_ce \(torch.float32, (11|1203), 'options'|sigmoid \(torch.float32, 13, 'options'"

PLANTS = {
    # (a) block_reduce without the barrier between writing the warp partials and reading them
    "missing_syncthreads": ("cb_cuda.cuh", "  if (lane == 0) scratch[warp] = x;\n  __syncthreads();\n",
                            "  if (lane == 0) scratch[warp] = x;\n", BLOCK),
    # (b) the butterfly starts one level too low (a wrong shuffle offset) ...
    "wrong_shuffle_offset": ("cb_cuda.cuh", "for (int offset = G / 2; offset > 0; offset >>= 1)",
                             "for (int offset = G / 4; offset > 0; offset >>= 1)", GROUP),
    # ... or leaves lane 31 out of the mask it calls with
    "wrong_shuffle_mask": ("cb_cuda.cuh", "__shfl_xor_sync(0xffffffffu, x, offset, G)",
                           "__shfl_xor_sync(0x7fffffffu, x, offset, G)", GROUP),
    # (c) a row tail stores one element too many
    "row_tail_off_by_one": ("cb_cuda.cuh", "if (j + v < C) row[j + v] = from_acc<T>(in[v]);",
                            "if (j + v <= C) row[j + v] = from_acc<T>(in[v]);", TAILS),
    # (d) the cluster's sum exchange reads rank 0's partial for every rank
    "wrong_cluster_rank": ("softmax_ce.cu", "s += *cluster.map_shared_rank(slot, rank);",
                           "s += *cluster.map_shared_rank(slot, 0);", CLUSTER),
    # (e) the divisor's floor drops a negative weight sum (PyTorch keeps it) ...
    "divisor_floor": ("cb_divisor.cuh", "return d != 0.0 ? d : 1.0;", "return d > 0.0 ? d : 1.0;",
                      DIVISOR + "|" + FUSED),
    # ... or a lane's rows are counted twice (a stride of half the lanes)
    "divisor_stride": ("cb_divisor.cuh", "for (int64_t i = v; i < n; i += kDivisorLanes)",
                       "for (int64_t i = v; i < n; i += kDivisorLanes / 2)", DIVISOR + "|" + FUSED),
    # (f) the fused divisor's words are reset by the second-to-last block, not the last: the next launch
    # would find them dirty (and a one-block grid never resets them)
    "fused_reset_early": ("cb_divisor.cuh", "atomicAdd(&f.sync[3], 1u) == blocks - 1u)",
                          "atomicAdd(&f.sync[3], 1u) == blocks - 2u)", FUSED),
    # ... or a chunk starts one row short of where it should (rows summed twice, the last ones never)
    "divisor_chunk_offset": ("cb_divisor.cuh", "const int64_t first = k * kDivisorChunkRows;",
                             "const int64_t first = k * (kDivisorChunkRows - 1);", DIVISOR + "|" + FUSED),
    # ... or the divisor's block never writes the gradient scale the waiting blocks read
    "fused_scale_unwritten": ("cb_divisor.cuh", "    if (a.grad_scale != nullptr) *static_cast<L*>(a.grad_scale) = L(1) / dv;\n",
                              "", FUSED),
    # ... or the blocks that write a gradient do not wait for the divisor's block (they read the NaN the
    # check puts in the scale; the emulator delays the first claim so that they run ahead of it)
    "fused_no_wait": ("cb_divisor.cuh", "    while (*reinterpret_cast<volatile unsigned*>(&f.sync[2]) == 0u) backoff();\n",
                      "", FUSED),
}


def _copy_kernels(dest: Path) -> Path:
    shutil.copytree(ROOT / "kernels" / "cuda", dest / "kernels" / "cuda", ignore=shutil.ignore_patterns("harness"))
    shutil.copytree(ROOT / "kernels" / "include", dest / "kernels" / "include")
    return dest / "kernels" / "cuda"


def _check(kernels: Path, out: Path, only: str) -> subprocess.CompletedProcess:
    lib = build_emulator.build(kernels, out, selftest=False)
    # two OS threads at least, whatever the machine: blocks must really run at the same time
    cmd = [sys.executable, str(EMU / "check_kernels.py"), "--lib", str(lib), "--only", only,
           "--configs", "cc9-forward,cc9-reverse", "--workers", "4"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_the_check_fails_on_a_planted_bug(tmp_path, plant):
    name, old, new, only = PLANTS[plant]
    kernels = _copy_kernels(tmp_path)
    source = kernels / name
    text = source.read_text()
    assert text.count(old) == 1, f"the code the plant {plant} edits has changed: update the plant"
    source.write_text(text.replace(old, new))
    res = _check(kernels, tmp_path / "build", only)
    out = res.stdout + res.stderr
    # a wrong value, or (the tail store past the last row) a write into the guard page
    assert (res.returncode == 1 and "cuda-emu-check: FAILED" in out) or (
        res.returncode == 70 and "invalid memory access" in out and "while running" in out), out[-3000:]


def test_the_unmodified_copy_passes_the_same_runs(tmp_path):
    kernels = _copy_kernels(tmp_path)
    only = "|".join(sorted({p[3] for p in PLANTS.values()}))
    res = _check(kernels, tmp_path / "build", only)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "cuda-emu-check: OK" in out
    for path in ("group4x1", "group32x1", "block64x8", "cluster2x288"):
        assert f" {path} " in out, out
