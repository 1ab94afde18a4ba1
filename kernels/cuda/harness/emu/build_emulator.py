"""Builds the CUDA emulator with the project's *unmodified* kernels into one shared library (test-only).

Every ``.cu`` / ``.cuh`` / ``.h`` of the kernel folder is rewritten mechanically into the build folder,
keeping its line numbers (``#line`` names the original file):

* ``kernel<T><<<grid, block, smem, stream>>>(args)`` becomes
  ``::cbemu::LaunchConfig(grid, block, smem, stream)(kernel<T>, args)``;
* ``__launch_bounds__(n)`` is removed from the declaration and checked at the top of the kernel body
  (``::cbemu::launch_bounds(n);``);
* ``__shared__ T name[n];`` becomes ``static thread_local T name[n];`` (one instance per block: a block
  runs on one OS thread) followed by ``::cbemu::shared_var(&name, sizeof(name), "name");``.

Then g++ compiles each with ``-include cuda_emu.h`` (which defines ``__CUDACC__`` and ``__CUDA_ARCH__``
so the device branches are the ones compiled) against the CUDA toolkit's headers, and links them with
the emulator runtime (runtime.cpp) and the C entry points (kernels_api.cpp). Objects are cached by the
hash of everything that goes into them.

    python kernels/cuda/harness/emu/build_emulator.py [--kernels DIR] [--out DIR] [--sources a.cu b.cu]

prints the path of the library.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
KERNELS = ROOT / "kernels" / "cuda"
SHARED_MATH = ROOT / "kernels" / "include"
DEFAULT_OUT = ROOT / "build" / "cuda-emu"
SELFTEST = HERE / "selftest.cu"

# The half-precision restrictions of torch's CUDAExtension build (as `make cuda-check` compiles them).
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-pthread", "-g0", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__"]


class RewriteError(ValueError):
    pass


def cuda_include_dir() -> Path:
    """The CUDA toolkit's headers: $CUDA_HOME, nvcc's toolkit, or /usr/local/cuda."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parents[1] / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for c in candidates:
        if (c / "cuda_runtime.h").is_file() and (c / "cuda_fp16.h").is_file():
            return c
    raise FileNotFoundError("no CUDA toolkit headers (cuda_runtime.h) found: set CUDA_HOME")


def toolchain_missing() -> str:
    """What the emulator's build lacks on this machine ("" when nothing)."""
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        return f"{cxx} is not on PATH"
    try:
        cuda_include_dir()
    except FileNotFoundError as e:
        return str(e)
    return ""


def _matching(text: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise RewriteError("unbalanced parentheses")


_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^<>;(){}]*(?:<[^<>;(){}]*>[^<>;(){}]*)*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_BOUNDS = re.compile(r"__launch_bounds__\s*\(")
_SHARED = re.compile(r"(extern\s+)?__shared__\s+([^;{}]+);")


def _rewrite_launches(text: str) -> str:
    out, pos = [], 0
    for m in _LAUNCH.finditer(text):
        if m.start() < pos:
            continue
        args_open = m.end() - 1
        args_close = _matching(text, args_open)
        args = text[args_open + 1:args_close]
        sep = ", " if args.strip() else ""
        out.append(text[pos:m.start()])
        out.append(f"::cbemu::LaunchConfig({m.group(2)})({m.group(1)}{sep}{args})")
        pos = args_close + 1
    out.append(text[pos:])
    return "".join(out)


def _rewrite_bounds(text: str) -> str:
    while True:
        m = _BOUNDS.search(text)
        if not m:
            return text
        close = _matching(text, m.end() - 1)
        bounds = " ".join(text[m.end():close].split())  # one line: the removed newlines are kept below
        body = text.index("{", close)
        # keep the newlines of the removed text so line numbers stay
        removed = "\n" * text[m.start():close + 1].count("\n")
        text = (text[:m.start()] + removed + text[close + 1:body + 1] + f" ::cbemu::launch_bounds({bounds});"
                + text[body + 1:])


def _rewrite_shared(text: str, name: str) -> str:
    def repl(m: re.Match) -> str:
        if m.group(1):
            raise RewriteError(f"{name}: dynamic shared memory (extern __shared__) is not emulated")
        decl = m.group(2)
        if "=" in decl or re.search(r",(?![^\[]*\])", decl):
            raise RewriteError(f"{name}: one __shared__ variable per declaration, without an initialiser: {decl!r}")
        ident = re.search(r"([A-Za-z_]\w*)\s*(\[[^\]]*\]\s*)*$", decl.strip())
        if not ident:
            raise RewriteError(f"{name}: cannot read the __shared__ declaration {decl!r}")
        var = ident.group(1)
        return f'static thread_local {decl}; ::cbemu::shared_var(&{var}, sizeof({var}), "{var}");'
    return _SHARED.sub(repl, text)


def rewrite(text: str, name: str) -> str:
    """The emulator's form of one CUDA source (line numbers kept)."""
    out = _rewrite_shared(_rewrite_bounds(_rewrite_launches(text)), name)
    for leftover in ("<<<", ">>>"):
        if leftover in re.sub(r"//.*|/\*.*?\*/", "", out, flags=re.S):
            raise RewriteError(f"{name}: a launch the rewrite could not read is left ({leftover})")
    return out


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(kernels: Path = KERNELS, out: Path = DEFAULT_OUT, sources: list[str] | None = None,
          selftest: bool = True, jobs: int | None = None, cxx: str | None = None, verbose: bool = False,
          cache: Path | None = None) -> Path:
    """Rewrites and compiles; returns the path of the shared library. Objects are kept in ``cache``
    (default: build/cuda-emu/obj, shared by every build folder), named by the hash of their source, the
    headers they may include and the compiler command, so a build from a modified copy of the kernels
    recompiles only what the change reaches."""
    kernels = Path(kernels).resolve()
    math_dir = kernels.parent / "include" if (kernels.parent / "include" / "cb_math.h").is_file() else SHARED_MATH
    cxx = cxx or os.environ.get("CXX") or "g++"
    cuda_inc = cuda_include_dir()
    src_dir = out / "src"
    obj_dir = Path(cache) if cache else DEFAULT_OUT / "obj"
    src_dir.mkdir(parents=True, exist_ok=True)
    obj_dir.mkdir(parents=True, exist_ok=True)

    cu_files = sorted(kernels.glob("*.cu"))
    if sources:
        cu_files = [kernels / s for s in sources]
    headers = sorted(p for p in kernels.iterdir() if p.suffix in (".cuh", ".h"))
    for path in headers + cu_files:
        # named as in the repository whichever copy is built: unchanged files of a copy hit the cache
        text = f'#line 1 "kernels/cuda/{path.name}"\n' + rewrite(path.read_text(), path.name)
        dest = src_dir / path.name
        if not dest.exists() or dest.read_text() != text:
            dest.write_text(text)
    if selftest:
        text = f'#line 1 "{SELFTEST.relative_to(ROOT)}"\n' + rewrite(SELFTEST.read_text(), SELFTEST.name)
        dest = src_dir / SELFTEST.name
        if not dest.exists() or dest.read_text() != text:
            dest.write_text(text)

    emu_headers = b"".join(p.read_bytes() for p in sorted((HERE / "include").iterdir()))
    kernel_headers = b"".join(p.read_bytes() for p in sorted(math_dir.glob("*.h")))
    kernel_headers += b"".join((src_dir / h.name).read_bytes() for h in headers)
    emu_flags = [f"-I{HERE / 'include'}", f"-I{cuda_inc}"]
    kernel_flags = [f"-I{HERE / 'include'}", f"-I{src_dir}", f"-I{math_dir}", f"-I{cuda_inc}", "-include",
                    "cuda_emu.h"]

    # (source, flags, what else it may include): the runtime sees only the emulator's headers
    units = [(src_dir / p.name, kernel_flags, kernel_headers) for p in cu_files]
    if selftest:
        units.append((src_dir / SELFTEST.name, kernel_flags, kernel_headers))
    units += [(HERE / "runtime.cpp", emu_flags, b""), (HERE / "kernels_api.cpp", kernel_flags, kernel_headers)]

    def compile_one(unit):
        src, flags, deps = unit
        cmd = [cxx, *CXXFLAGS, *flags, "-x", "c++", "-c", str(src)]
        portable = " ".join(cmd).replace(str(src_dir), "<src>").replace(str(math_dir), "<math>")
        key = _hash(src.read_bytes(), emu_headers, deps, portable.encode())
        obj = obj_dir / f"{src.stem}-{key}.o"
        if not obj.exists():
            tmp = obj.with_suffix(".tmp.o")
            if verbose:
                print(" ".join(cmd), file=sys.stderr)
            res = subprocess.run([*cmd, "-o", str(tmp)], capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"compiling {src.name} for the emulator failed:\n{res.stderr[-6000:]}")
            tmp.replace(obj)
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, units))
    lib = out / f"libcbemu-{_hash(*(o.name.encode() for o in objects))}.so"
    if not lib.exists():
        tmp = lib.with_suffix(".tmp.so")
        res = subprocess.run([cxx, "-shared", "-pthread", *map(str, objects), "-o", str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"linking the emulator failed:\n{res.stderr[-6000:]}")
        tmp.replace(lib)
    return lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=Path, default=KERNELS, help="the folder of .cu sources (default kernels/cuda)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder (default build/cuda-emu)")
    ap.add_argument("--sources", nargs="*", help="only these .cu files of the folder")
    ap.add_argument("--no-selftest", action="store_true", help="leave out the emulator's own test kernels")
    ap.add_argument("--probe", action="store_true",
                    help="exit 0 when g++ and the CUDA headers are there, else say what is missing and exit 1")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.probe:
        missing = toolchain_missing()
        if missing:
            print(f"cuda-emu-check: skipped ({missing})")
        return 1 if missing else 0
    print(build(args.kernels, args.out, args.sources, selftest=not args.no_selftest, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
