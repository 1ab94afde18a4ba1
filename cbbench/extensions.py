"""What cbbench's compiled CPU modules are built from, and how: one description for both builds.

* ``cbbench._C`` -- the ops, defined once (``kernels/ops/ops.cpp``): schemas, autograd, composites;
* ``cbbench._cpu`` -- the CPU kernels: a Cython extension (``kernels/cpu/_cpu.pyx``) compiled as C++
  against torch, registering its kernels for the CPU dispatch key when imported; OpenMP when the compiler
  has it.

Both are torch extensions (``torch.utils.cpp_extension``). ``setup.py`` builds them at install time when
torch is importable there; :mod:`cbbench.jit` builds them on first use otherwise, into a cache, by running
this file as a script (``build`` below) in child processes. The CUDA module is built by ``setup.py`` only.

This file imports neither torch nor the cbbench package at module level: ``setup.py`` loads it by path in
a build environment that may have neither, and the first-use build runs it in a fresh interpreter.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

OPS = "cbbench._C"
CPU = "cbbench._cpu"
MODULES = (OPS, CPU)  # import order: the CPU kernels register into the op library

# Where an installed (non-editable) package keeps the sources of its first-use build (setup.py copies
# them there); in a checkout or an editable install the sources are the repository's kernels/.
SOURCES_DIR = "_sources"

# The row kernels' flags: -ffp-contract=fast lets the polynomials use FMA; -fno-math-errno keeps libm calls
# pure; -fno-trapping-math (FP exception flags only) lets GCC if-convert the selects of the simd loops,
# which otherwise stay scalar; -fno-wrapv undoes Python's -fwrapv, under which GCC cannot assume the int
# column index never wraps and vectorises short rows badly (C = 10 rows 2.5x slower). No -ffast-math: it
# would break the inf/NaN handling we promise. No -std: torch's BuildExtension adds the standard its
# headers need.
ROW_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fno-wrapv", "-g0"]
OPS_FLAGS = ["-O2", "-g0"]

_SIMD_PROBE = ("int main(){float s=0;\n#pragma omp simd reduction(+:s)\n"
               "for(int i=0;i<8;++i)s+=i;return s > 0 ? 0 : 1;}\n")
_OPENMP_PROBE = "#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n"


def package_root() -> Path:
    """The folder of the cbbench package (this file's)."""
    return Path(__file__).resolve().parent


def source_root(package: Optional[Path] = None) -> Optional[Path]:
    """The folder holding ``kernels/``: the checkout (or editable install) the package lives in, else the
    installed package's copy (``cbbench/_sources``); ``None`` when neither exists."""
    package = package or package_root()
    for root in (package.parent, package / SOURCES_DIR):
        if (root / "kernels" / "ops" / "ops.cpp").is_file():
            return root
    return None


def kernel_files(root: Path) -> List[Path]:
    """Every file the CPU modules are built from, under ``root`` (sorted): the shared scalar math, the ops,
    the CPU kernels (the Cython source and, where it was generated, its C++)."""
    kernels = Path(root) / "kernels"
    files = [*kernels.glob("include/*.h"), *kernels.glob("ops/*.h"), *kernels.glob("ops/*.cpp"),
             *kernels.glob("cpu/*.h"), *kernels.glob("cpu/*.pyx"), *kernels.glob("cpu/*.pxd"),
             *kernels.glob("cpu/_cpu.cpp")]
    generated_header = kernels / "cpu" / "_cpu.h"  # Cython's, beside its C++; not a source
    return sorted(p for p in files if p.is_file() and p != generated_header)


def fingerprint(root: Path) -> str:
    """sha256 (16 hex digits) of :func:`kernel_files`' names and contents."""
    digest = hashlib.sha256()
    for path in kernel_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def compiler() -> str:
    """The C++ compiler a build would call: ``$CXX``, else ``c++`` (torch.utils.cpp_extension's choice)."""
    return (os.environ.get("CXX") or "c++").split()[0]


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


def cpu_flags() -> Tuple[List[str], List[str], bool]:
    """``(compile flags, link flags, openmp)`` of ``cbbench._cpu``: :data:`ROW_FLAGS` plus ``-fopenmp``
    where the compiler has OpenMP (``CBBENCH_OPENMP=0`` turns it off), else ``-fopenmp-simd`` where it
    takes that (no threads, but ``#pragma omp simd`` still vectorises the row loops)."""
    openmp = os.environ.get("CBBENCH_OPENMP", "1") != "0" and _compiler_accepts(["-fopenmp"], _OPENMP_PROBE)
    flags, link = list(ROW_FLAGS), []
    if openmp:
        flags.append("-fopenmp")
        link.append("-fopenmp")
    elif _compiler_accepts(["-fopenmp-simd"], _SIMD_PROBE):
        flags.append("-fopenmp-simd")
    return flags, link, openmp


def cpu_source_problem(root: Path) -> Optional[str]:
    """Why :func:`cpu_source` would fail (no Cython and no generated C++), or ``None``."""
    import importlib.util

    kernels_cpu = Path(root) / "kernels" / "cpu"
    pyx, generated = kernels_cpu / "_cpu.pyx", kernels_cpu / "_cpu.cpp"
    if importlib.util.find_spec("Cython") is not None:
        return None
    if generated.is_file() and (not pyx.is_file() or generated.stat().st_mtime >= pyx.stat().st_mtime):
        return None
    return (f"{pyx} needs Cython to become C++ (pip install Cython), and no up-to-date {generated.name} was "
            "generated before")


def cpu_source(root: Path, cython_dir: Optional[Path] = None) -> Path:
    """The C++ of the Cython module: Cython's output of ``kernels/cpu/_cpu.pyx`` (written next to it, or
    under ``cython_dir``) where Cython is installed, else the C++ generated before (an installed package
    ships it). Raises RuntimeError when neither exists."""
    kernels_cpu = Path(root) / "kernels" / "cpu"
    pyx, generated = kernels_cpu / "_cpu.pyx", kernels_cpu / "_cpu.cpp"
    problem = cpu_source_problem(root)
    if problem is not None:
        raise RuntimeError(problem)
    try:
        from Cython.Build import cythonize
    except ImportError:
        return generated
    if not pyx.is_file():
        return generated
    options = {"language_level": 3, "compiler_directives": {"boundscheck": False, "wraparound": False}}
    if cython_dir is not None:
        options["build_dir"] = str(cython_dir)
    out = cythonize([_cython_extension(pyx)], quiet=True, **options)[0].sources[0]
    return Path(out)


def _cython_extension(pyx: Path):
    from setuptools import Extension

    return Extension(CPU, sources=[str(pyx)], language="c++")


def include_dirs(root: Path) -> Dict[str, List[str]]:
    kernels = Path(root) / "kernels"
    return {OPS: [str(kernels / "ops")],
            CPU: [str(kernels / "include"), str(kernels / "cpu"), str(kernels / "ops")]}


def describe_cpu(flags: List[str], openmp: bool) -> str:
    return f"ops ({OPS}) and Cython CPU kernels ({CPU}), OpenMP={'on' if openmp else 'off'}, flags={flags}"


def torch_extensions(root: Path, names=MODULES, *, relative_to: Optional[Path] = None,
                     cython_dir: Optional[Path] = None) -> Tuple[list, str]:
    """``(torch CppExtensions of names, a line describing the build)``. Sources are given relative to
    ``relative_to`` when set (setup.py builds from the checkout), else absolute."""
    from torch.utils.cpp_extension import CppExtension

    root = Path(root)
    rel = (lambda p: os.path.relpath(p, relative_to)) if relative_to is not None else str  # noqa: E731
    dirs = include_dirs(root)
    exts, flags, openmp = [], list(ROW_FLAGS), False
    if OPS in names:
        exts.append(CppExtension(OPS, sources=[rel(root / "kernels" / "ops" / "ops.cpp")], include_dirs=dirs[OPS],
                                 depends=[str(p) for p in (root / "kernels" / "ops").glob("*.h")],
                                 extra_compile_args=list(OPS_FLAGS)))
    if CPU in names:
        flags, link, openmp = cpu_flags()
        source = cpu_source(root, cython_dir)
        exts.append(CppExtension(CPU, sources=[rel(source)], include_dirs=dirs[CPU],
                                 depends=[str(p) for p in kernel_files(root) if p.suffix == ".h"],
                                 define_macros=[("CB_BUILD_FLAGS", '"' + " ".join(flags) + '"')],
                                 extra_compile_args=flags, extra_link_args=link))
    return exts, describe_cpu(flags, openmp)


def build(root: Path, names, out_dir: Path, temp_dir: Path) -> None:
    """Compile ``names`` from the sources under ``root`` into ``out_dir/cbbench/`` with setuptools and
    torch's BuildExtension (ninja when installed, else setuptools' own compiler calls), build files in
    ``temp_dir``. Run in a child process: setuptools' ``setup()`` keeps global state."""
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, is_ninja_available

    temp_dir.mkdir(parents=True, exist_ok=True)
    exts, line = torch_extensions(root, names, cython_dir=temp_dir / "cython")
    print(f"cbbench first-use build: {line}", flush=True)
    os.chdir(temp_dir)  # setup() reads the configuration files of the working directory: none here
    setup(name="cbbench-kernels", ext_modules=exts, script_name="cbbench-first-use-build",
          cmdclass={"build_ext": BuildExtension.with_options(use_ninja=is_ninja_available())},
          script_args=["build_ext", "--build-lib", str(out_dir), "--build-temp", str(temp_dir / "build")])


def main(argv=None) -> int:
    """``python extensions.py build ROOT OUT TEMP MODULE...`` (the first-use build's child process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 5 or argv[0] != "build" or any(name not in MODULES for name in argv[4:]):
        print(f"usage: extensions.py build ROOT OUT TEMP MODULE... (MODULE in {MODULES})", file=sys.stderr)
        return 2
    build(Path(argv[1]), argv[4:], Path(argv[2]), Path(argv[3]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
