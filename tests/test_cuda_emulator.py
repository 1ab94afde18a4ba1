"""The CUDA emulator on its own (kernels/cuda/harness/emu): its source rewrite, and its behaviour on the
test kernels of selftest.cu — shuffle lane maths for every width against the CUDA Programming Guide's
description, votes, independent half-warp groups, deadlock and divergence detection, __syncthreads
with exited threads, fiber orders exposing a missing barrier, per-block shared memory, launch-geometry
limits, __trap, the cluster barrier, distributed shared memory and its lifetime rule.

The project's kernels under the emulator are `make cuda-emu-check` (check_kernels.py; run by `make
test`) and the planted bugs it must catch are tests/test_cuda_emulated_kernels.py. Skipped without
the CUDA toolkit's headers or g++.
"""
import ctypes
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "kernels" / "cuda" / "harness" / "emu"
sys.path.insert(0, str(EMU))

import build_emulator  # noqa: E402

LAUNCH_FAILURE, INVALID_CONFIGURATION, INVALID_CLUSTER_SIZE = 719, 9, 912


_MISSING = build_emulator.toolchain_missing()

pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "toolchain present")


# ---- the rewrite -------------------------------------------------------------------------------------
def test_rewrite_turns_launches_into_calls_and_keeps_line_numbers():
    src = ("template <int G>\n__global__ void k(int a, float* b) {}\n"
           "void f(float* p, cudaStream_t s) {\n"
           "  k<G><<<unsigned(n + (m * 2)),\n     128, 0, s>>>(f(1, 2), p);\n"
           "  other<<<1, 32>>>();\n"
           "  ns::kern<T, 4, true> <<<dim3(2, 2), 64>>> (p);\n}\n")
    out = build_emulator.rewrite(src, "x.cu")
    assert out.count("\n") == src.count("\n")
    assert "::cbemu::LaunchConfig(unsigned(n + (m * 2)),\n     128, 0, s)(k<G>, f(1, 2), p)" in out
    assert "::cbemu::LaunchConfig(1, 32)(other)" in out
    assert "::cbemu::LaunchConfig(dim3(2, 2), 64)(ns::kern<T, 4, true>, p)" in out
    assert "<<<" not in out and ">>>" not in out


def test_rewrite_moves_launch_bounds_into_the_body_and_registers_shared_variables():
    src = ("__global__ void __launch_bounds__(kThreads,\n 2) k(int a,\n int b) {\n"
           "  __shared__ A scratch[33];  // comment\n  __shared__ float x;\n}\n")
    out = build_emulator.rewrite(src, "x.cu")
    assert out.count("\n") == src.count("\n")
    assert "__launch_bounds__" not in out
    assert "int b) { ::cbemu::launch_bounds(kThreads, 2);\n" in out
    assert ('static thread_local A scratch[33]; ::cbemu::shared_var(&scratch, sizeof(scratch), "scratch");'
            in out)
    assert 'static thread_local float x; ::cbemu::shared_var(&x, sizeof(x), "x");' in out


@pytest.mark.parametrize("decl", ["extern __shared__ float dyn[];", "__shared__ float a[2], b[3];",
                                  "__shared__ int n = 0;"])
def test_rewrite_refuses_what_it_does_not_emulate(decl):
    with pytest.raises(build_emulator.RewriteError):
        build_emulator.rewrite("__global__ void k() {\n  " + decl + "\n}\n", "x.cu")


# ---- the runtime, on selftest.cu --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu():
    import emulator
    e = emulator.load()
    yield e
    e.free_all()


@pytest.fixture
def lib(emu):
    emu.set_order("forward")
    emu.lib.cbemu_set_current_device(0)
    emu.lib.cbemu_set_workers(2)
    emu.reset()
    return emu.lib


def _out(n, dtype=torch.int32):
    return torch.full((n,), -12345, dtype=dtype)


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


def _documented_source(mode, arg, width, lane):
    """The lane whose value `lane` receives, as the CUDA C++ Programming Guide describes the warp shuffle
    functions (written independently of the PTX formula the emulator implements)."""
    group, pos = lane // width, lane % width
    if mode == 0:  # __shfl_sync: srcLane modulo width, within the caller's group
        return group * width + arg % width
    if mode == 1:  # __shfl_up_sync: lane - delta; unchanged below delta within the group
        return lane - arg if pos >= arg else lane
    if mode == 2:  # __shfl_down_sync: lane + delta; unchanged past the group's end
        return lane + arg if pos + arg < width else lane
    src = lane ^ arg  # __shfl_xor_sync: earlier groups are readable, later ones give the own value
    return lane if src // width > group else src


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_shuffle_lane_maths_for_every_width(lib, width):
    blocks, threads = 2, 64
    args = {0: list(range(-40, 41, 3)) + [width - 1, width, 31, 32], 1: list(range(32)), 2: list(range(32)),
            3: list(range(32))}
    checked = 0
    for mode, values in args.items():
        for arg in values:
            out = _out(blocks * threads)
            assert lib.cbemu_selftest_shuffle(mode, arg, width, blocks, threads, _p(out)) == 0, lib.cbemu_last_failure()
            want = [1000 * b + 7 * (32 * w + _documented_source(mode, arg, width, lane)) + 3
                    for b in range(blocks) for w in range(threads // 32) for lane in range(32)]
            assert out.tolist() == want, (mode, arg, width)
            checked += 1
    assert checked == sum(len(v) for v in args.values())


def test_shuffle_width_that_is_not_a_power_of_two_fails(lib):
    out = _out(32)
    assert lib.cbemu_selftest_shuffle(3, 1, 12, 1, 32, _p(out)) == LAUNCH_FAILURE
    assert "__trap" in lib.cbemu_last_failure().decode()


def test_a_double_crosses_lanes_whole(lib):
    out = _out(32, torch.float64)
    assert lib.cbemu_selftest_shuffle_double(_p(out)) == 0
    assert out.tolist() == [float(lane ^ 5) + 0.25 for lane in range(32)]


def test_half_warp_groups_shuffle_independently(lib):
    out = _out(32)
    assert lib.cbemu_selftest_half_warp(_p(out)) == 0, lib.cbemu_last_failure()
    assert out.tolist() == [7 * (lane + 1 if lane % 16 < 15 else lane) + 3 for lane in range(32)]


def test_votes(lib):
    out = _out(96)
    assert lib.cbemu_selftest_vote(_p(out)) == 0
    ballot = sum(1 << lane for lane in range(32) if lane % 3 == 0)
    assert out.view(32, 3).tolist() == [[ctypes.c_int32(ballot).value, 1, 0]] * 32


@pytest.mark.parametrize("name, words", [
    ("deadlock", ["deadlock in block (0,0,0)", "32 threads wait at __syncthreads", "32 at warp-synchronous"]),
    # forward order: lanes 0-15 complete their own group and leave, so lanes 16-31 name exited lanes;
    # reverse: lane 15 meets lanes that wait with another mask
    ("mask_mismatch", [("divergent warp-synchronous calls", "names lanes 0x0000ffff that have exited")]),
    ("exited_lane", ["exited"]),
    ("outside_mask", ["outside the mask"]),
])
def test_undefined_warp_behaviour_fails_the_launch_with_a_message(lib, name, words):
    out = _out(64)
    assert getattr(lib, f"cbemu_selftest_{name}")(_p(out)) == LAUNCH_FAILURE
    message = lib.cbemu_last_failure().decode()
    for w in words:
        assert any(alt in message for alt in ((w,) if isinstance(w, str) else w)), message
    assert lib.cbemu_failure_count() == 1


def test_exited_threads_do_not_hold_up_syncthreads(lib):
    out = _out(128)
    assert lib.cbemu_selftest_exit_then_sync(128, _p(out)) == 0, lib.cbemu_last_failure()
    assert out[:64].tolist() == [42] * 64 and out[64:].tolist() == [-12345] * 64


def test_a_missing_barrier_shows_under_one_fiber_order_and_not_another(emu, lib):
    blocks, threads = 3, 256
    exact = threads * (threads + 1) // 2
    results = {}
    for order in ("forward", "reverse", "random"):
        emu.set_order(order, seed=7)
        for barrier in (1, 0):
            out = _out(blocks)
            assert lib.cbemu_selftest_block_sum(barrier, blocks, threads, _p(out)) == 0
            results[order, barrier] = out.tolist()
    for order in ("forward", "reverse", "random"):
        assert results[order, 1] == [exact] * blocks
    assert results["reverse", 0] == [exact] * blocks  # the last warp wrote first: the race is hidden
    assert results["forward", 0] != [exact] * blocks  # warp 0 read the partials before the others wrote


def test_shared_memory_is_per_block(lib):
    blocks, threads = 37, 64
    out = _out(blocks * threads)
    assert lib.cbemu_selftest_shared_isolation(blocks, threads, _p(out)) == 0
    assert out.view(blocks, threads).tolist() == [[b] * threads for b in range(blocks)]


def test_unwritten_shared_memory_reads_as_poison(lib):
    out = _out(8)
    assert lib.cbemu_selftest_uninitialised_shared(_p(out)) == 0
    assert out.tolist() == [-1] * 8


def test_launch_geometry_limits(lib):
    out = _out(2048)
    assert lib.cbemu_selftest_bounded(64, _p(out)) == 0
    assert lib.cbemu_selftest_bounded(65, _p(out)) == LAUNCH_FAILURE
    assert "__launch_bounds__(64)" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_big_shared(_p(out)) == LAUNCH_FAILURE
    assert "above 48 KiB" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_shuffle(3, 1, 32, 1, 1056, _p(out)) == INVALID_CONFIGURATION
    assert "block (1056,1,1)" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_shuffle(3, 1, 32, 0, 32, _p(out)) == INVALID_CONFIGURATION
    assert lib.cbemu_selftest_index(1, 1, 1, 8, 8, 65, _p(out)) == INVALID_CONFIGURATION
    launched = lib.cbemu_launch_count()
    assert launched == 3  # the bounded, 65-thread and big-shared launches ran (and failed); the refused never did


def test_trap_fails_the_launch_naming_the_thread(lib):
    out = _out(64)
    assert lib.cbemu_selftest_trap(_p(out)) == LAUNCH_FAILURE
    assert "thread (5,0,0): __trap() executed" in lib.cbemu_last_failure().decode()


def test_three_dimensional_indices(lib):
    g, b = (3, 2, 2), (4, 3, 2)
    n = 3 * 2 * 2 * 4 * 3 * 2
    out = _out(n)
    assert lib.cbemu_selftest_index(*g, *b, _p(out)) == 0
    per = 4 * 3 * 2
    assert out.tolist() == [blk * 10000 + t for blk in range(12) for t in range(per)]


@pytest.mark.parametrize("mode", [0, 2])
def test_cluster_blocks_read_each_other_through_distributed_shared_memory(lib, mode):
    blocks, threads, cluster = 12, 96, 4
    out = _out(blocks * threads)
    assert lib.cbemu_selftest_cluster(mode, blocks, threads, cluster, _p(out)) == 0, lib.cbemu_last_failure()
    want = [[100 + (b % cluster + 1) % cluster] * threads for b in range(blocks)]
    assert out.view(blocks, threads).tolist() == want


def test_a_block_exiting_while_its_shared_memory_may_be_read_fails(emu, lib):
    for order in ("forward", "reverse", "random"):
        emu.set_order(order, seed=3)
        for _ in range(3):  # whatever the OS threads' timing, the rule is broken and reported
            out = _out(4 * 64)
            assert lib.cbemu_selftest_cluster(1, 4, 64, 2, _p(out)) == LAUNCH_FAILURE
            message = lib.cbemu_last_failure().decode()
            assert "exited" in message and "shared memory" in message, message


def test_cluster_deadlock_and_arrive_without_wait(lib):
    out = _out(128)
    assert lib.cbemu_selftest_cluster_deadlock(_p(out)) == LAUNCH_FAILURE
    assert "deadlock in the cluster" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_arrive_twice(_p(out)) == LAUNCH_FAILURE
    assert "barrier_arrive twice" in lib.cbemu_last_failure().decode()


def test_cluster_launch_limits(emu, lib):
    out = _out(1024)
    assert lib.cbemu_selftest_cluster(0, 16, 32, 16, _p(out)) == INVALID_CLUSTER_SIZE
    assert "portable size 8" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_cluster(0, 6, 32, 4, _p(out)) == INVALID_CLUSTER_SIZE
    assert "not a multiple" in lib.cbemu_last_failure().decode()
    lib.cbemu_set_current_device(1)  # compute capability 8.0: no clusters
    assert lib.cbemu_selftest_cluster(0, 4, 32, 2, _p(out)) == INVALID_CLUSTER_SIZE
    assert "compute capability 8.0" in lib.cbemu_last_failure().decode()
    emu.set_device(5, 9, 0, max_cluster=2)
    lib.cbemu_set_current_device(5)
    assert lib.cbemu_selftest_cluster(0, 8, 32, 4, _p(out)) == INVALID_CLUSTER_SIZE
    assert "cannot be resident" in lib.cbemu_last_failure().decode()
    assert lib.cbemu_selftest_cluster(0, 8, 32, 2, _p(out)) == 0
