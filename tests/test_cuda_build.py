"""The torch-free CUDA sources compile with plain nvcc (no GPU, no CUDA build of torch needed).

Runs ``make cuda-check``: every ``kernels/cuda/*.cu`` for sm_90 and sm_80 with the half-precision
restrictions of torch's extension build and warnings as errors; the torch binding compiled against
torch's headers with its cb:: calls resolved against the kernel objects; a host harness that links
all launchers and checks the launch plans; and the host test of the kernels' device logic
(kernels/cuda/harness/device_math_check.cu: every path's per-thread / per-row functions on the CPU
against the reference's loss, on adversarial inputs). Also: the nvcc architecture flags setup.py
builds with (CBBENCH_CUDA_ARCH adds to TORCH_CUDA_ARCH_LIST and embeds PTX), read from nvcc's plan.
Skipped when nvcc (or make) is not on PATH.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "kernels" / "cuda"


def test_cuda_sources_are_torch_free():
    """The .cu files must build without torch; only the binding may include it."""
    sources = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh")) + sorted(CUDA_DIR.glob("*.h"))
    assert sources, "no CUDA sources found"
    for path in sources:
        includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.M)
        torchy = [inc for inc in includes if inc.split("/")[0] in ("torch", "ATen", "c10", "pybind11")]
        assert not torchy, f"{path.name} includes {torchy}: keep torch in binding.cpp"
    assert "PYBIND11_MODULE(_cuda" in (CUDA_DIR / "binding.cpp").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_make_cuda_check_compiles_and_links_the_kernels():
    res = subprocess.run(["make", "-s", "cuda-check", f"CHECK_PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "plan_check: OK" in out and "cuda-check: OK" in out, out[-4000:]
    # the device logic ran on the host, every softmax path (the split one with the review's trigger)
    assert "device_math_check: OK" in out, out[-4000:]
    for line in ("f32  split   C=150001  masked first class / chunk / row: ok",
                 "f32  cluster C=16385   -inf/+inf/NaN at", "bf16 group   C=2048    -inf/+inf/NaN at"):
        assert line in out, out[-4000:]
    # The binding is compiled against torch's headers and resolved against the kernel objects (the
    # test environment always has torch, so the check must not be skipped here).
    assert "check_binding: OK" in out, out[-4000:]


# ---- architectures: setup.py's nvcc flags, as torch's BuildExtension completes them -------------------
def _setup_module():
    spec = importlib.util.spec_from_file_location("cbbench_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


def _embedded_images(monkeypatch, env):
    """The (kind, sm) images nvcc would put in the fatbinary of a build with `env`: setup.py's nvcc
    flags plus what torch adds to them (BuildExtension appends _get_cuda_arch_flags(flags))."""
    from torch.utils import cpp_extension

    for key in ("TORCH_CUDA_ARCH_LIST", "CBBENCH_CUDA_ARCH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    flags = _setup_module().cuda_nvcc_flags()
    try:
        flags = flags + cpp_extension._get_cuda_arch_flags(flags)
    except IndexError:  # no arch flag, no TORCH_CUDA_ARCH_LIST and no GPU: torch cannot choose
        pass
    res = subprocess.run(["nvcc", "--dryrun", "-c", str(CUDA_DIR / "scale.cu"), "-o", "/dev/null", *flags],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return {(kind, int(sm)) for kind, sm in re.findall(r"--image3=kind=(elf|ptx),sm=(\d+)", res.stderr)}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("env, want", [
    # CBBENCH_CUDA_ARCH adds to TORCH_CUDA_ARCH_LIST (it used to replace it: no sm_80, no PTX)
    ({"TORCH_CUDA_ARCH_LIST": "8.0", "CBBENCH_CUDA_ARCH": "90"}, {("elf", 80), ("elf", 90), ("ptx", 90)}),
    ({"TORCH_CUDA_ARCH_LIST": "9.0", "CBBENCH_CUDA_ARCH": "8.0"}, {("elf", 80), ("elf", 90), ("ptx", 90)}),
    ({"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX", "CBBENCH_CUDA_ARCH": "90"}, {("elf", 80), ("elf", 90), ("ptx", 90)}),
    # an arch-specific target carries no portable PTX: the newest portable one does
    ({"TORCH_CUDA_ARCH_LIST": "8.0", "CBBENCH_CUDA_ARCH": "90a"}, {("elf", 80), ("elf", 90), ("ptx", 80)}),
    # without CBBENCH_CUDA_ARCH torch's own choice stands
    ({"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX"}, {("elf", 80), ("elf", 90), ("ptx", 90)}),
], ids=["add-90-to-80", "add-80-to-90", "duplicate", "arch-specific", "torch-default"])
def test_cuda_arch_flags_add_to_torch_list_and_embed_ptx(monkeypatch, env, want):
    got = _embedded_images(monkeypatch, env)  # (fatbinary lists an sm_90a cubin as sm=90)
    assert got == want, f"{env}: nvcc would embed {sorted(got)}, want {sorted(want)}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(torch.cuda.is_available(), reason="torch's default list comes from the visible GPUs here")
def test_cuda_arch_alone_embeds_its_ptx(monkeypatch):
    """An sm_80 build (no TORCH_CUDA_ARCH_LIST, no visible GPU) still runs on an H100: its PTX JITs."""
    assert _embedded_images(monkeypatch, {"CBBENCH_CUDA_ARCH": "80"}) == {("elf", 80), ("ptx", 80)}


def test_cuda_arch_rejects_unreadable_values(monkeypatch):
    setup = _setup_module()
    assert setup.cuda_arch_flags({}) == []
    with pytest.raises(SystemExit, match="CBBENCH_CUDA_ARCH"):
        setup.cuda_arch_flags({"CBBENCH_CUDA_ARCH": "hopper"})
