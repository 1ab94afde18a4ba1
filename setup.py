"""Build cbbench: the pure-Python package, its compiled kernels, and what a first-use build needs.

The compiled modules are torch extensions (``cbbench/extensions.py`` describes the CPU ones):

* ``cbbench._C`` -- the ops, defined once (kernels/ops/ops.cpp): schemas, autograd, composites.
* ``cbbench._cpu`` -- the CPU kernels: a Cython extension (kernels/cpu/_cpu.pyx) compiled as C++ against
  torch, registered for the CPU dispatch key; OpenMP when the compiler has it.
* ``cbbench._cuda`` -- the CUDA kernels (kernels/cuda) registered for the CUDA dispatch key; built when
  torch has CUDA and nvcc is found, or when ``CBBENCH_CUDA=1``; ``CBBENCH_CUDA=0`` turns it off.

Which torch they are built against: the one this build imports -- ``pip install --no-build-isolation``
-- or, in pip's isolated build environment (which holds only ``[build-system] requires``, never torch:
an isolated build must not download a multi-GB CUDA wheel), the torch of the environment being installed
into, found by asking this interpreter outside the isolation. With no torch anywhere (or
``CBBENCH_BUILD_KERNELS=0``) none is built here: cbbench compiles them on first use (``cbbench/jit.py``)
from the kernel sources this build ships in the package (``cbbench/_sources``, with Cython's C++ of the CPU
module, so the first-use build needs a C++ compiler and torch, not Cython). Every build writes
``cbbench/_build_info.json``: the torch it built against and what it built, or why not; the package checks
it before loading a module, so a module built against another torch is never imported.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
INCLUDE = str(ROOT / "kernels" / "include")
BUILD_INFO = "_build_info.json"


def _load_extensions_module():
    """cbbench/extensions.py by path: importing the package would import torch."""
    spec = importlib.util.spec_from_file_location("cbbench_extensions", ROOT / "cbbench" / "extensions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extensions = _load_extensions_module()

# what this build found and did, written to cbbench/_build_info.json by every build step
RECORD = {"torch": None, "torch_git": None, "python": sys.implementation.cache_tag, "torch_found": None,
          "modules": {}, "cpu_build": None}


def _target_torch_site():
    """``(site-packages folder, torch version)`` of the torch this interpreter imports outside pip's build
    isolation (pip runs this file with the target environment's interpreter and hides that environment's
    packages through PYTHONPATH and PYTHONNOUSERSITE), or ``(None, why not)``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = ("import json, os, torch; "
            "print(json.dumps([os.path.dirname(os.path.dirname(torch.__file__)), torch.__version__]))")
    with tempfile.TemporaryDirectory() as cwd:  # nothing importable from the working directory
        try:
            res = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                                 timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{type(exc).__name__}: {exc}"
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit code {res.returncode}"
    site, version = json.loads(res.stdout.strip().splitlines()[-1])
    return site, version


def find_torch():
    """The torch to build against: importable here, or the target environment's (see the module
    docstring); ``None`` when there is none. Records where it came from."""
    try:
        import torch
        RECORD["torch_found"] = "importable in the build environment"
    except ImportError as exc:
        site, version = _target_torch_site()
        if site is None:
            RECORD["torch_found"] = f"not importable in the build environment ({exc}) nor outside it ({version})"
            return None
        sys.path.append(site)
        try:
            import torch
        except ImportError as exc2:
            RECORD["torch_found"] = f"torch {version} in {site} does not import in the build environment ({exc2})"
            return None
        RECORD["torch_found"] = f"in the environment being installed into ({site}), outside pip's build isolation"
        print(f"cbbench build: building against torch {torch.__version__} of the environment being installed "
              f"into ({site})")
    RECORD["torch"] = torch.__version__
    RECORD["torch_git"] = getattr(torch.version, "git_version", None)
    return torch


def op_extensions(torch):
    """``cbbench._C`` and ``cbbench._cpu`` against ``torch``; none without torch or with
    ``CBBENCH_BUILD_KERNELS=0`` (cbbench then compiles them on first use)."""
    if os.environ.get("CBBENCH_BUILD_KERNELS", "1") == "0":
        why = "not built at install (CBBENCH_BUILD_KERNELS=0): compiled on first use"
    elif torch is None:
        why = f"not built at install: no torch to build against ({RECORD['torch_found']}): compiled on first use"
    else:
        try:
            exts, line = extensions.torch_extensions(ROOT, relative_to=ROOT)
        except RuntimeError as exc:  # the Cython module without Cython
            why = f"not built at install ({exc}): compiled on first use"
        else:
            print(f"cbbench build: {line}")
            RECORD["cpu_build"] = line
            RECORD["modules"].update({name: "built" for name in extensions.MODULES})
            return exts
    print(f"cbbench build: NO compiled CPU kernels: {why}")
    RECORD["modules"].update({name: why for name in extensions.MODULES})
    return []


def write_record(package_dir) -> None:
    Path(package_dir).mkdir(parents=True, exist_ok=True)
    (Path(package_dir) / BUILD_INFO).write_text(json.dumps(RECORD, indent=1) + "\n")


class BuildPy(build_py):
    """The package, plus what a first-use build needs (the kernel sources, Cython's C++ of the CPU module,
    under cbbench/_sources) and the build record; an editable install reads the checkout instead."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        package_dir = Path(self.build_lib) / "cbbench"
        # the build folder outlives a build (pip builds a checkout in place): nothing of an earlier one
        shutil.rmtree(package_dir / extensions.SOURCES_DIR, ignore_errors=True)
        for name, status in RECORD["modules"].items():
            if status != "built":
                for stale in package_dir.glob(name.rsplit(".", 1)[1] + ".*"):
                    stale.unlink()
        try:
            generated = extensions.cpu_source(ROOT)  # writes kernels/cpu/_cpu.cpp when Cython is installed
        except RuntimeError as exc:
            generated = None
            print(f"cbbench build: the package ships no C++ of the CPU module ({exc}); a first-use build "
                  "will need Cython")
        # Cython's C++ where it was generated, else the Cython source (an installed file's modification
        # time says nothing about which of the two is newer)
        skip = ROOT / "kernels" / "cpu" / ("_cpu.pyx" if generated is not None and generated.suffix == ".cpp"
                                           else "_cpu.cpp")
        for path in (p for p in extensions.kernel_files(ROOT) if p != skip):
            target = package_dir / extensions.SOURCES_DIR / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        write_record(package_dir)


def build_ext_class(base):
    class BuildExt(base):
        """torch's BuildExtension, then the build record beside the modules (in place for editable
        installs and ``build_ext --inplace``). Not ``--parallel``: with ninja, torch writes every module's
        build file into the one build folder."""

        def run(self):
            super().run()
            write_record(Path(self.get_ext_fullpath("cbbench._C")).parent)
    return BuildExt


def _want_cuda():
    flag = os.environ.get("CBBENCH_CUDA", "").strip()
    if flag == "0":
        return False, "off (CBBENCH_CUDA=0)"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        if flag == "1":
            sys.exit("CBBENCH_CUDA=1 but there is no torch to build against (in the build environment or the "
                     "environment being installed into); install torch first")
        return False, "off (no torch to build against)"
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
    """``[cbbench._cuda]`` when :func:`_want_cuda` says so (the decision goes into the build record)."""
    want, why = _want_cuda()
    print(f"cbbench build: CUDA kernels {why}")
    RECORD["modules"]["cbbench._cuda"] = "built" if want else why
    if not want:
        return []
    from torch.utils.cpp_extension import CUDAExtension

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
    return [ext]


if __name__ == "__main__":  # pip / setuptools run this file as __main__; tests import cuda_arch_flags
    torch_module = find_torch()
    exts = op_extensions(torch_module)
    cuda_exts = cuda_extensions()
    cmdclass = {"build_py": BuildPy}
    if exts or cuda_exts:
        from torch.utils.cpp_extension import BuildExtension
        cmdclass["build_ext"] = build_ext_class(BuildExtension)
    setup(ext_modules=exts + cuda_exts, cmdclass=cmdclass)
