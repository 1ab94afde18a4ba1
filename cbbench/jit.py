"""Making cbbench's compiled modules importable: the install-time build when it was built against this torch,
else the CPU modules compiled on first use (cached), else a loud warning.

For the CPU modules (``cbbench._C``, the ops; ``cbbench._cpu``, the CPU kernels), decided once per process
when :mod:`cbbench.ops` loads them (:func:`import_extension`):

1. **installed**: ``cbbench/_build_info.json`` (written by ``setup.py``) says they were built against this
   very torch (version and git revision): imported. A module built against another torch is never
   imported (a torch extension's ABI is that of the torch it was compiled with). Without a record (a
   build older than the record, or modules copied in by hand) present modules are imported.
2. **first use**: otherwise they are compiled from the package's sources (:mod:`cbbench.extensions`) with
   ``torch.utils.cpp_extension`` into ``CBBENCH_CACHE_DIR`` (default ``~/.cache/cbbench``)
   ``/kernels/<python>-torch<version>-<hash>/`` -- one compiler process per module, in parallel, under a
   file lock (so the ranks of one job build once), with a progress message on stderr. Later processes
   load the cached build at once. ``CBBENCH_JIT=0`` turns this off.
3. otherwise (no C++ compiler, no Python headers, a failed build, ``CBBENCH_JIT=0``): a
   :class:`KernelsMissingWarning`, once per process, naming the cost and the fix; the losses run the
   pure-PyTorch reference.

``cbbench._cuda`` is built at install time only (``setup.py``); it is imported under the same record
check, and a CUDA-enabled torch without it, on a machine with an NVIDIA GPU, gets the same warning.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

from . import extensions

BUILD_INFO = "_build_info.json"
CUDA = "cbbench._cuda"
JIT_ENV = "CBBENCH_JIT"
CACHE_ENV = "CBBENCH_CACHE_DIR"
PROGRESS_EVERY_S = 30.0

FIX = ("Fix: `python -m cbbench.info` says what is missing. Usually: install a C++ compiler and the Python "
       "headers (e.g. `apt install g++ python3-dev`); the next `import cbbench` then compiles the kernels once "
       "(a few minutes) and caches them. Or build them at install time against the installed torch: "
       "`pip install cbbench` into an environment that already has torch, or `pip install "
       "--no-build-isolation cbbench` (torch, Cython and setuptools installed first).")
COST = ("the losses and fused heads run the pure-PyTorch reference instead of the fused kernels: several times "
        "slower than the kernels and slower than plain PyTorch (docs/results.md in the repository has the "
        "measured table)")


class KernelsMissingWarning(RuntimeWarning):
    """cbbench's compiled kernels are missing: the losses run the (slow) pure-PyTorch reference."""


# name -> {"module": module or None, "origin": how it was found, "reason": why it is missing}
_state: Dict[str, dict] = {}
_warned = set()


# ----------------------------------------------------------------------------------------------
# the install-time build
# ----------------------------------------------------------------------------------------------
def installed_record() -> Optional[dict]:
    """``cbbench/_build_info.json`` of this package (setup.py's record), or ``None``."""
    path = extensions.package_root() / BUILD_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _torch_identity() -> Tuple[str, Optional[str]]:
    import torch

    return torch.__version__, getattr(torch.version, "git_version", None)


def _installed_verdict(name: str, record: Optional[dict]) -> Optional[str]:
    """Why the install-time build of ``name`` must not be imported, or ``None`` (import it)."""
    if record is None:
        return None
    status = record.get("modules", {}).get(name)
    if status is None:
        return f"the install-time build record has no {name}"
    if status != "built":
        return status
    version, git = _torch_identity()
    if record.get("torch") != version or (record.get("torch_git") and git and record["torch_git"] != git):
        return (f"the installed {name} was built against torch {record.get('torch')} "
                f"({(record.get('torch_git') or '?')[:10]}); this is torch {version} ({(git or '?')[:10]})")
    return None


def _import_installed(name: str) -> Tuple[Optional[object], Optional[str], str]:
    """``(module, why not, origin)`` of the install-time build of ``name``."""
    if name in sys.modules:  # put there on purpose (a test's stand-in, a module built elsewhere)
        return sys.modules[name], None, "already imported"
    record = installed_record()
    verdict = _installed_verdict(name, record)
    if verdict is not None:
        return None, verdict, "install-time build"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # not built, or built against another torch without a record
        if isinstance(exc, ModuleNotFoundError) and exc.name == name:
            return None, "not built at install time", "install-time build"
        return None, f"{type(exc).__name__}: {exc}", "install-time build"
    origin = (f"install-time build against torch {record['torch']}" if record is not None
              else "install-time build (no build record)")
    return module, None, origin


# ----------------------------------------------------------------------------------------------
# the first-use build
# ----------------------------------------------------------------------------------------------
def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                     or os.path.expanduser("~/.cache"), "cbbench")
    return Path(base) / "kernels"


def _compiler_path() -> Optional[str]:
    return shutil.which(extensions.compiler())


def build_dir(root: Path) -> Path:
    """The cache folder of a first-use build of the sources under ``root`` for this torch, interpreter
    and compiler (any change gives another folder)."""
    version, git = _torch_identity()
    cxx = _compiler_path() or extensions.compiler()
    try:
        cxx_stamp = str(os.stat(cxx).st_mtime_ns)
    except OSError:
        cxx_stamp = "-"
    key = "\0".join([extensions.fingerprint(root), version, git or "", sys.version, cxx, cxx_stamp,
                     os.environ.get("CBBENCH_OPENMP", "1"), os.environ.get("CXX", "")])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / f"{sys.implementation.cache_tag}-torch{version}-{digest}"


def _built_file(folder: Path, name: str) -> Path:
    return folder / "cbbench" / (name.rsplit(".", 1)[1] + sysconfig.get_config_var("EXT_SUFFIX"))


def _cannot_build() -> Optional[str]:
    """Why a first-use build cannot even start here, or ``None``."""
    if os.environ.get(JIT_ENV, "1") == "0":
        return f"the first-use build is off ({JIT_ENV}=0)"
    if extensions.source_root() is None:
        return f"the package has no kernel sources to compile ({extensions.package_root() / extensions.SOURCES_DIR})"
    if _compiler_path() is None:
        return f"no C++ compiler: `{extensions.compiler()}` is not on PATH (set CXX to use another)"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return f"no Python headers for this interpreter ({header} is missing; e.g. apt install python3-dev)"
    return None


def _say(text: str, end: str = "\n") -> None:
    print(text, file=sys.stderr, end=end, flush=True)


def _elapsed(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


_CHILD = ("import importlib.util, sys\n"
          "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
          "spec = importlib.util.spec_from_file_location('cbbench_extensions', sys.argv[1])\n"
          "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
          "sys.exit(module.main(sys.argv[2:]))\n")


def _short(name: str) -> str:
    return name.rsplit(".", 1)[1]


def _failure_line(log: Path) -> str:
    """The line of a failed build's log that says why: the compiler's first error, else the last line."""
    lines = [line.strip() for line in _tail(log, 400).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _compile(root: Path, folder: Path, names, why: str) -> Dict[str, Optional[str]]:
    """Compile ``names`` into ``folder`` (one child process each, in parallel), saying so on stderr;
    returns each name's failure (``None``: built), also recorded as ``folder/<module>.failed``."""
    version, _ = _torch_identity()
    _say(f"cbbench: compiling its kernels ({', '.join(names)}) for torch {version} -- first use: {why}. "
         f"This happens once and takes a few minutes; the build is cached in {folder}. "
         f"({JIT_ENV}=0 skips it: the losses then run the slower pure-PyTorch reference.)")
    temp = folder / "build"
    temp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "1"))
    children = {}
    began = time.monotonic()
    try:
        for name in names:
            log = open(folder / f"{_short(name)}.log", "w")
            cmd = [sys.executable, "-c", _CHILD, str(Path(extensions.__file__).resolve()), "build", str(root),
                   str(temp / _short(name) / "lib"), str(temp / _short(name)), name]
            children[name] = (subprocess.Popen(cmd, cwd=str(temp), env=env, stdout=log, stderr=subprocess.STDOUT), log)
        tty = sys.stderr.isatty()
        last = began
        pending = dict(children)
        while pending:
            time.sleep(0.5)
            for name, (proc, log) in list(pending.items()):
                if proc.poll() is not None:
                    log.close()
                    del pending[name]
                    state = "compiled" if proc.returncode == 0 else f"FAILED (exit code {proc.returncode})"
                    _say(("\r" if tty else "") + f"cbbench: {name} {state} after {_elapsed(time.monotonic() - began)}")
            now = time.monotonic()
            if pending and (tty or now - last >= PROGRESS_EVERY_S):
                line = f"cbbench: compiling {', '.join(pending)} ... {_elapsed(now - began)}"
                _say("\r" + line if tty else line, end="" if tty else "\n")
                last = now
    except BaseException:  # Ctrl-C: stop the compilers this build started, leave no half build behind
        for proc, log in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        raise
    outcome = {}
    for name, (proc, _) in children.items():
        built = _built_file(temp / _short(name) / "lib", name)
        if proc.returncode == 0 and built.is_file():
            # moved into the cache whole (a rename): an interrupted build never leaves half a module there
            _built_file(folder, name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, _built_file(folder, name))
            outcome[name] = None
            continue
        log = folder / f"{_short(name)}.log"
        outcome[name] = f"its first-use build failed: {_failure_line(log)} (log: {log})"
        (folder / f"{_short(name)}.failed").write_text(outcome[name])
        _say(f"cbbench: {name}: {outcome[name]}; the log's last lines:\n{_tail(log)}")
    if not any(outcome.values()):
        _say(f"cbbench: kernels compiled in {_elapsed(time.monotonic() - began)}; later imports load them from "
             f"{folder}")
    return outcome


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _first_use(names, why: str) -> Dict[str, Tuple[Optional[Path], Optional[str], str]]:
    """Per name: ``(its built file, why not, origin)`` -- from the cache, or from a new build."""
    reason = _cannot_build()
    if reason is not None:
        return {name: (None, reason, "first-use build") for name in names}
    root = extensions.source_root()
    folder = build_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    result = {}
    with open(str(folder) + ".lock", "a+") as lock:
        _lock(lock, folder)
        to_build = []
        for name in names:
            failed = folder / f"{_short(name)}.failed"
            if _built_file(folder, name).is_file():
                result[name] = (_built_file(folder, name), None, f"first-use build, cached in {folder}")
            elif failed.is_file():
                result[name] = (None, f"{failed.read_text().strip()}; delete {failed} to try again", "first-use build")
            elif name == extensions.CPU and extensions.cpu_source_problem(root) is not None:
                result[name] = (None, extensions.cpu_source_problem(root), "first-use build")
            else:
                to_build.append(name)
        if to_build:
            for name, problem in _compile(root, folder, to_build, why).items():
                result[name] = ((None, problem, "first-use build") if problem is not None else
                                (_built_file(folder, name), None, f"first-use build, compiled now into {folder}"))
    return result


def _lock(handle, folder: Path) -> None:
    """An exclusive lock on ``handle`` (released when it closes), saying so when another process holds it;
    nothing where the platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _say(f"cbbench: waiting for another process that is compiling the kernels into {folder}")
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # a file system without flock: build unlocked
        pass


def _load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    return module


# ----------------------------------------------------------------------------------------------
# what cbbench.ops calls
# ----------------------------------------------------------------------------------------------
def _settle_cpu_modules() -> None:
    """Decide, once, where ``cbbench._C`` and ``cbbench._cpu`` come from (module docstring)."""
    why = {}
    for name in extensions.MODULES:
        module, reason, origin = _import_installed(name)
        _state[name] = {"module": module, "origin": origin, "reason": reason}
        if module is None:
            why[name] = reason
            if name == extensions.OPS:  # the CPU kernels register into this op library: build both
                break
    needed = list(extensions.MODULES) if extensions.OPS in why else list(why)
    if not needed:
        return
    built = _first_use(needed, "; ".join(f"{n}: {why.get(n, 'rebuilt with the op library')}" for n in needed))
    for name in needed:
        path, reason, origin = built[name]
        if path is not None and (name == extensions.OPS or _state[extensions.OPS]["module"] is not None):
            try:
                _state[name] = {"module": _load_file(name, path), "origin": origin, "reason": None}
                continue
            except ImportError as exc:
                reason = f"its first-use build {path} does not import ({type(exc).__name__}: {exc})"
        elif path is not None:
            reason = f"the op library {extensions.OPS} is missing"
        _state[name] = {"module": None, "origin": origin, "reason": reason}
    missing = [name for name in needed if _state[name]["module"] is None]
    if missing:
        warn_missing("cpu", "; ".join(f"{n}: {_state[n]['reason']}" for n in missing)
                     + (f" (install-time build: {why[extensions.OPS]})" if extensions.OPS in why else ""))


def import_extension(name: str) -> Tuple[Optional[object], Optional[str]]:
    """``(module, None)``, or ``(None, why it is missing)``: never raises for a missing module."""
    if name not in _state:
        if name in extensions.MODULES:
            _settle_cpu_modules()
        else:
            module, reason, origin = _import_installed(name)
            _state[name] = {"module": module, "origin": origin, "reason": reason}
            if name == CUDA and module is None and _torch_has_cuda() and _nvidia_gpu_present():
                warn_missing("cuda", reason)
    entry = _state[name]
    return entry["module"], entry["reason"]


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


def _nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver lists a GPU, read from /proc: asking CUDA would initialise it, which
    importing cbbench never does."""
    try:
        return any(os.scandir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def warn_missing(device: str, reason: str) -> None:
    """The loud, once-per-process warning that ``device`` tensors run the reference."""
    if device in _warned:
        return
    _warned.add(device)
    tensors = "CPU" if device == "cpu" else "CUDA"
    fix = FIX if device == "cpu" else ("Fix: install cbbench where nvcc and the CUDA toolkit match torch's CUDA: "
                                       "`CBBENCH_CUDA=1 pip install --no-build-isolation cbbench`.")
    # warn_explicit: shown under the name "cbbench", without a line of this file's source
    warnings.warn_explicit(f"\n*** cbbench: NO COMPILED KERNELS for {tensors} tensors ***\nWhy: {reason}\n"
                           f"Cost: {COST}.\n{fix}\n", KernelsMissingWarning, filename="cbbench", lineno=0,
                           module="cbbench")


def report() -> Dict[str, dict]:
    """Per compiled module: ``{"loaded": bool, "origin": ..., "reason": ...}`` (for ``cbbench.info``)."""
    return {name: {"loaded": entry["module"] is not None, "origin": entry["origin"], "reason": entry["reason"]}
            for name, entry in _state.items()}
