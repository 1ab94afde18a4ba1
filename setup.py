"""Build cbbench's compiled kernels.

* ``cbbench._cpu`` — Cython kernels (kernels/cpu), always built; OpenMP when the compiler has it.
* ``cbbench._C`` — the CPU losses' small-batch fast path (kernels/cpu/fast_path.cpp), a torch
  extension: built when torch is importable at build time (``--no-build-isolation``, as the Makefile
  installs), ``CBBENCH_FAST_PATH=0`` turns it off.
* ``cbbench._cuda`` — CUDA kernels (kernels/cuda) with a thin torch binding; built when torch has CUDA
  and nvcc is found, or when ``CBBENCH_CUDA=1``; ``CBBENCH_CUDA=0`` turns it off. Needs torch at build
  time: ``pip install --no-build-isolation -e .``.
"""
import os
import re
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


def fast_path_extensions():
    """``cbbench._C`` (kernels/cpu/fast_path.cpp): the CPU losses and their autograd node in one C++
    call for small batches; a torch extension, so only where torch is importable at build time
    (``--no-build-isolation``); ``CBBENCH_FAST_PATH=0`` turns it off. cbbench works without it."""
    if os.environ.get("CBBENCH_FAST_PATH", "").strip() == "0":
        print("cbbench build: CPU fast path off (CBBENCH_FAST_PATH=0)")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("cbbench build: CPU fast path off (torch not importable at build time: use --no-build-isolation)")
        return [], {}
    openmp = os.environ.get("CBBENCH_OPENMP", "1") != "0" and _compiler_has_openmp()
    # the row kernels' flags (see cpu_extensions); no -std: BuildExtension picks torch's
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fno-wrapv"]
    flags += ["-fopenmp"] if openmp else []
    ext = CppExtension(
        "cbbench._C",
        sources=[str(Path("kernels") / "cpu" / "fast_path.cpp")],
        include_dirs=[INCLUDE, str(ROOT / "kernels" / "cpu")],
        depends=[str(p) for p in sorted((ROOT / "kernels" / "cpu").glob("*.h"))] + [str(Path(INCLUDE) / "cb_math.h")],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"] if openmp else [],
    )
    print(f"cbbench build: CPU fast path (torch extension), flags={flags}")
    return [ext], {"build_ext": BuildExtension}


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


def _arch_tokens(spec: str) -> list:
    """'90', '9.0', '9.0a', '80;90', '8.0 9.0+PTX' -> ['90'], ['90'], ['90a'], ['80', '90'], ['80', '90']."""
    out = []
    for tok in re.split(r"[;,\s]+", spec.strip()):
        tok = tok.replace("+PTX", "").replace(".", "")
        if not tok:
            continue
        if not re.fullmatch(r"\d{2,3}a?", tok):
            sys.exit(f"CBBENCH_CUDA_ARCH: cannot read {spec!r} (examples: 90, 8.0, '80;90', 90a)")
        out.append(tok)
    return out


def _arch_key(num: str):
    return (int(num.rstrip("a")), num.endswith("a"))


def cuda_arch_flags(env=None) -> list:
    """nvcc -gencode flags when CBBENCH_CUDA_ARCH is set, else [] (torch's default applies).

    torch's BuildExtension computes its own flags (from TORCH_CUDA_ARCH_LIST, or the visible GPUs with
    PTX for the newest) only when no nvcc flag mentions "arch" (torch.utils.cpp_extension.
    _get_cuda_arch_flags), so one added -gencode would silently *replace* that list and embed no PTX:
    a build for sm_90 then fails with "no kernel image" on an A100, one for sm_80 on an H100. Here the
    whole list is spelled out: torch's architectures, plus CBBENCH_CUDA_ARCH's, plus PTX of the newest
    of them (JIT-compiled by newer GPUs; an arch-specific "a" target has no portable PTX).
    """
    env = os.environ if env is None else env
    extra = _arch_tokens(env.get("CBBENCH_CUDA_ARCH", ""))
    if not extra:
        return []
    from torch.utils import cpp_extension

    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    try:
        if env.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = env["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        torch_flags = cpp_extension._get_cuda_arch_flags()
    except IndexError:
        torch_flags = []  # no TORCH_CUDA_ARCH_LIST and no visible GPU: CBBENCH_CUDA_ARCH alone
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    sass, ptx = set(extra), set()
    for kind, num in re.findall(r"code=(sm|compute)_(\w+)", " ".join(torch_flags)):
        (sass if kind == "sm" else ptx).add(num)
    portable = [a for a in sass | ptx if not a.endswith("a")]
    if portable:
        ptx.add(max(portable, key=_arch_key))
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in sorted(sass, key=_arch_key)]
    flags += [f"-gencode=arch=compute_{a},code=compute_{a}" for a in sorted(ptx, key=_arch_key)]
    return flags


def cuda_nvcc_flags(env=None) -> list:
    """nvcc flags of the CUDA kernels. Architectures: torch's TORCH_CUDA_ARCH_LIST (default: the GPUs
    it sees), plus CBBENCH_CUDA_ARCH (e.g. 90), plus PTX (cuda_arch_flags). The softmax cluster path
    needs code built for sm_90 or newer (checked at run time)."""
    return ["-O3", "-std=c++17", "-lineinfo"] + cuda_arch_flags(env)


def cuda_extensions():
    want, why = _want_cuda()
    print(f"cbbench build: CUDA kernels {why}")
    if not want:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "cuda").glob("*.cu"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "cuda").glob("*.cpp"))
    nvcc_flags = cuda_nvcc_flags()
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


if __name__ == "__main__":  # pip / setuptools run this file as __main__; tests import cuda_arch_flags
    exts = cpu_extensions()
    fast_exts, fast_cmdclass = fast_path_extensions()
    cuda_exts, cmdclass = cuda_extensions()
    setup(ext_modules=exts + fast_exts + cuda_exts, cmdclass={**fast_cmdclass, **cmdclass})
