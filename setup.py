"""Build cbbench's compiled kernels (all are torch extensions: build against the torch that is installed,
``pip install --no-build-isolation``, as the Makefile does).

* ``cbbench._C`` -- the ops, defined once (kernels/ops/ops.cpp): schemas, autograd, composites.
* ``cbbench._cpu`` -- the CPU kernels: a Cython extension (kernels/cpu/_cpu.pyx) compiled as C++ against
  torch, whose row loops run the shared row math, registered for the CPU dispatch key; OpenMP when the
  compiler has it.
* ``cbbench._cuda`` -- the CUDA kernels (kernels/cuda) registered for the CUDA dispatch key; built when
  torch has CUDA and nvcc is found, or when ``CBBENCH_CUDA=1``; ``CBBENCH_CUDA=0`` turns it off.
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


# The row kernels' flags: -ffp-contract=fast lets the polynomials use FMA; -fno-math-errno keeps libm calls
# pure; -fno-trapping-math (FP exception flags only) lets GCC if-convert the selects of the simd loops,
# which otherwise stay scalar; -fno-wrapv undoes Python's -fwrapv, under which GCC cannot assume the int
# column index never wraps and vectorises short rows badly (C = 10 rows 2.5x slower). No -ffast-math: it
# would break the inf/NaN handling we promise. No -std: torch's BuildExtension adds the standard its
# headers need.
ROW_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fno-wrapv", "-g0"]


def op_extensions():
    """``cbbench._C`` (the ops) and ``cbbench._cpu`` (the Cython CPU kernels), both against torch; none
    when torch is not importable at build time (the losses then run the reference, and say so)."""
    try:
        from Cython.Build import cythonize
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:
        print(f"cbbench build: NO compiled kernels ({exc}): build with torch and Cython installed and "
              "`pip install --no-build-isolation`")
        return [], {}
    openmp = os.environ.get("CBBENCH_OPENMP", "1") != "0" and _compiler_has_openmp()
    flags = list(ROW_FLAGS)
    link = []
    if openmp:
        flags.append("-fopenmp")
        link.append("-fopenmp")
    elif _compiler_accepts(["-fopenmp-simd"], _SIMD_PROBE):
        flags.append("-fopenmp-simd")  # no threads, but `#pragma omp simd` still vectorises the row loops
    ops_dir = str(ROOT / "kernels" / "ops")
    ops = CppExtension("cbbench._C", sources=[str(Path("kernels") / "ops" / "ops.cpp")], include_dirs=[ops_dir],
                       depends=[str(ROOT / "kernels" / "ops" / "cb_ops.h")], extra_compile_args=["-O2", "-g0"])
    cpu = CppExtension(
        "cbbench._cpu",
        sources=[str(Path("kernels") / "cpu" / "_cpu.pyx")],
        include_dirs=[INCLUDE, str(ROOT / "kernels" / "cpu"), ops_dir],
        depends=[str(p) for p in sorted((ROOT / "kernels" / "cpu").glob("*.h"))]
        + [str(Path(INCLUDE) / "cb_math.h"), str(ROOT / "kernels" / "ops" / "cb_ops.h")],
        define_macros=[("CB_BUILD_FLAGS", '"' + " ".join(flags) + '"')],
        extra_compile_args=flags,
        extra_link_args=link,
    )
    cpu = cythonize([cpu], language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})
    print(f"cbbench build: ops (cbbench._C) and Cython CPU kernels (cbbench._cpu), OpenMP={'on' if openmp else 'off'}, "
          f"flags={flags}")
    return [ops, *cpu], {"build_ext": BuildExtension}


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
        include_dirs=[INCLUDE, str(ROOT / "kernels" / "cuda"), str(ROOT / "kernels" / "ops")],
        # No -std for the host compiler: torch's BuildExtension adds the standard its headers need
        # (C++20 for torch 2.13), the one `make cuda-check` compiles binding.cpp with.
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
    )
    return [ext], {"build_ext": BuildExtension}


if __name__ == "__main__":  # pip / setuptools run this file as __main__; tests import cuda_arch_flags
    exts, cmdclass = op_extensions()
    cuda_exts, cuda_cmdclass = cuda_extensions()
    setup(ext_modules=exts + cuda_exts, cmdclass={**cmdclass, **cuda_cmdclass})
