"""Build cbbench's compiled kernels.

* ``cbbench._cpu`` — Cython kernels (kernels/cpu), always built; OpenMP when the compiler has it.
* ``cbbench._cuda`` — CUDA kernels (kernels/cuda) with a thin torch binding; built when torch has CUDA
  and nvcc is found, or when ``CBBENCH_CUDA=1``; ``CBBENCH_CUDA=0`` turns it off. Needs torch at build
  time: ``pip install --no-build-isolation -e .``.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
INCLUDE = str(ROOT / "kernels" / "include")


_SIMD_PROBE = "int main(){float s=0;\n#pragma omp simd reduction(+:s)\nfor(int i=0;i<8;++i)s+=i;return s > 0 ? 0 : 1;}\n"
_OPENMP_PROBE = "#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n"


def _compiler_accepts(flags, source) -> bool:
    """Whether the C++ compiler builds and links ``source`` with ``flags``."""
    cc = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    cc = cc.split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(source)
        try:
            res = subprocess.run([cc, *flags, str(src), "-o", str(Path(tmp) / "probe")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


def _compiler_has_openmp() -> bool:
    return _compiler_accepts(["-fopenmp"], _OPENMP_PROBE)


def cpu_extensions():
    from Cython.Build import cythonize

    openmp = os.environ.get("CBBENCH_OPENMP", "1") != "0" and _compiler_has_openmp()
    # -ffp-contract=fast lets the polynomials use FMA; -fno-math-errno keeps libm calls pure;
    # -fno-trapping-math (FP exception flags only) lets GCC if-convert the selects of the simd loops,
    # which otherwise stay scalar; -fno-wrapv undoes Python's -fwrapv, under which GCC cannot assume
    # the int column index never wraps and vectorises short rows badly (C = 10 rows 2.5x slower).
    # No -ffast-math: it would break the inf/NaN handling we promise.
    compile_args = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fno-wrapv"]
    link_args = []
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    elif _compiler_accepts(["-fopenmp-simd"], _SIMD_PROBE):
        # no threads, but `#pragma omp simd` still vectorises the row loops
        compile_args.append("-fopenmp-simd")
    ext = Extension(
        "cbbench._cpu",
        sources=[str(Path("kernels") / "cpu" / "_cpu.pyx")],
        include_dirs=[INCLUDE, str(ROOT / "kernels" / "cpu")],
        depends=[str(p) for p in sorted((ROOT / "kernels" / "cpu").glob("*.h"))] + [str(Path(INCLUDE) / "cb_math.h")],
        language="c++",
        define_macros=[("CB_BUILD_FLAGS", '"' + " ".join(compile_args) + '"')],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    print(f"cbbench build: Cython CPU kernels, OpenMP={'on' if openmp else 'off'}, flags={compile_args}")
    return cythonize([ext], language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


def _want_cuda():
    flag = os.environ.get("CBBENCH_CUDA", "").strip()
    if flag == "0":
        return False, "off (CBBENCH_CUDA=0)"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        if flag == "1":
            sys.exit("CBBENCH_CUDA=1 but torch is not importable in the build environment; "
                     "use `pip install --no-build-isolation`")
        return False, "off (torch not importable at build time: use --no-build-isolation)"
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    if flag == "1":
        return True, "on (CBBENCH_CUDA=1)"
    if torch.version.cuda and torch.cuda.is_available() and nvcc and os.path.exists(nvcc):
        return True, f"on (torch {torch.__version__}, CUDA {torch.version.cuda}, nvcc {nvcc})"
    return False, f"off (torch CUDA={torch.version.cuda}, GPU={torch.cuda.is_available()}, nvcc={nvcc})"


def cuda_extensions():
    want, why = _want_cuda()
    print(f"cbbench build: CUDA kernels {why}")
    if not want:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "cuda").glob("*.cu"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "cuda").glob("*.cpp"))
    # Architectures: torch's TORCH_CUDA_ARCH_LIST (default: the GPUs it sees), plus CBBENCH_CUDA_ARCH
    # (e.g. 90). The softmax cluster path needs code built for sm_90 or newer (checked at run time).
    arch = os.environ.get("CBBENCH_CUDA_ARCH")
    nvcc_flags = ["-O3", "-std=c++17", "-lineinfo"]
    if arch:
        nvcc_flags += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    print(f"cbbench build: CUDA sources {sources}, nvcc flags {nvcc_flags}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)')}")
    ext = CUDAExtension(
        "cbbench._cuda",
        sources=sources,
        include_dirs=[INCLUDE, str(ROOT / "kernels" / "cuda")],
        # No -std for the host compiler: torch's BuildExtension adds the standard its headers need
        # (C++20 for torch 2.13), the one `make cuda-check` compiles binding.cpp with.
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
    )
    return [ext], {"build_ext": BuildExtension}


exts = cpu_extensions()
cuda_exts, cmdclass = cuda_extensions()
setup(ext_modules=exts + cuda_exts, cmdclass=cmdclass)
