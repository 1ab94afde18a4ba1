"""The regression gate: ``asv continuous --factor 1.15`` between two commits, failing on "PERFORMANCE
DECREASED". The CI test that proves it (tests/test_bench_gate.py) and the GPU workflow
(.github/workflows/gpu-bench.yml) run it through this module, so both run the same command.

    python -m cbbench.bench.gate BASE HEAD [--factor 1.15] [--bench REGEX] [--overlay] [--machine NAME]

Every quantity the asv suite records is lower-is-better (time, peak memory, import time, error), so
the gate takes all of it by default (:data:`GATE_BENCH`). asv flags a benchmark when it is worse by more
than the factor *and*, where it has samples (the speed and import times), significantly so
(Mann-Whitney U, p < 0.002); values without samples (memory, error) by the factor alone. A timed
benchmark the first run flags is measured again, alone, up to :data:`CONFIRM` times, and passes only
if a re-run measures it within the factor: on a busy shared machine a single run can flag an unchanged
commit by more than 15 % (docs/results.md, "The regression gate, measured"), while a real regression stays past
the factor (a re-run that finds it "not significant" but still slower by the factor does not clear
it). A value without samples fails on the first flag (it is deterministic or nearly so).

``--overlay``: asv's own environments build torch and every dependency per configuration and cbbench
per commit (about a minute of compiling each). The overlay environment instead lets asv create its
virtualenv, installs nothing into it but the commit's ``cbbench`` package, and puts this interpreter's
site-packages (torch, numpy, ...) behind it on ``sys.path``; the compiled kernels are built once per
fingerprint of their sources (``kernels/``, ``setup.py``, ``pyproject.toml``) and reused by every commit
with the same sources. asv's ``existing`` environment cannot do this: it refuses ``asv continuous``
(it cannot install a given commit).

The same file is the script asv runs for the overlay's build/install/uninstall steps, inside the bare
virtualenv; that part uses the standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

FACTOR = 1.15
# re-runs of what the first run flags: a regression must reproduce in every run (see run_gate)
CONFIRM = 2
GATE_BENCH = r"^bench_(speed|memory|import|accuracy)\."
DECREASED = "PERFORMANCE DECREASED"
PACKAGE = "cbbench"
# what the compiled extension is built from: a commit whose fingerprint matches reuses the build
KERNEL_INPUTS = ("setup.py", "pyproject.toml", "kernels")
OVERLAY_PTH = "cbbench-gate-overlay.pth"


# ----------------------------------------------------------------------------------------------
# running the gate
# ----------------------------------------------------------------------------------------------
@dataclass
class AsvRun:
    """One ``asv continuous`` run: its exit status, its output, and the rows of its comparison table
    that asv marked worse (``+``, or ``!`` for a newly failing benchmark) and better (``-``), as
    ``{benchmark name with parameters: ratio}`` (ratio = head / base; ``nan`` when asv printed none)."""

    returncode: int
    output: str
    worse: Dict[str, float] = field(default_factory=dict)
    better: Dict[str, float] = field(default_factory=dict)
    # marked rows whose values carry a spread ("1.2±0.1ms"): measured from samples, so noisy
    sampled: Set[str] = field(default_factory=set)
    # every row's ratio, marked or not (asv prints "~1.40" for a change it did not find significant)
    ratios: Dict[str, float] = field(default_factory=dict)

    @property
    def decreased(self) -> bool:
        """asv printed "PERFORMANCE DECREASED"."""
        return DECREASED in self.output

    @property
    def flagged(self) -> bool:
        return self.returncode != 0 or self.decreased


def parse_output(returncode: int, output: str) -> AsvRun:
    """The marked rows of asv's comparison table (``| + | before | after | ratio | name |``)."""
    run = AsvRun(returncode, output)
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[4].startswith("bench_"):
            continue
        try:
            ratio = float(cells[3].lstrip("~"))
        except ValueError:
            ratio = float("nan")
        run.ratios[cells[4]] = ratio
        if cells[0] not in ("+", "-", "!"):
            continue
        (run.better if cells[0] == "-" else run.worse)[cells[4]] = ratio
        if "±" in cells[1] or "±" in cells[2]:
            run.sampled.add(cells[4])
    return run


@dataclass
class GateResult:
    """The gate's verdict over its runs: the first ``asv continuous`` run over the whole selection,
    then re-runs of only the sampled (timed) benchmarks it flagged. A timed benchmark fails the gate
    unless a re-run measures it within the factor (then the flag was noise of the machine). A value
    without samples (an error rate, a memory peak) fails on the first run's flag. ``confirmed``: what
    fails, with its last ratio."""

    runs: List[AsvRun]
    confirmed: Dict[str, float]

    @property
    def first(self) -> AsvRun:
        return self.runs[0]

    @property
    def failed(self) -> bool:
        return bool(self.confirmed) or (self.first.flagged and not self.first.worse)

    def summary(self) -> str:
        lines = [f"asv continuous run {i + 1}: exit {r.returncode}, " + (
            ", ".join(f"{name} x{ratio:.2f}" for name, ratio in r.worse.items()) or "nothing worse")
            for i, r in enumerate(self.runs)]
        verdict = ("FAILED: " + ", ".join(f"{n} x{r:.2f}" for n, r in self.confirmed.items())
                   if self.confirmed else "FAILED: asv exited with an error" if self.failed else "passed")
        return "\n".join(lines + [f"gate {verdict}"])


def continuous_command(base: str, head: str, *, config: str, factor: float = FACTOR, bench: str = GATE_BENCH,
                       machine: Optional[str] = None, attributes: Sequence[str] = (),
                       python: str = sys.executable) -> List[str]:
    """The ``asv continuous`` command line of the gate."""
    cmd = [python, "-m", "asv", "continuous", "--config", str(config), "--factor", str(factor), "--split",
           "--no-only-changed", "--show-stderr", "--bench", bench]
    for attr in attributes:
        cmd += ["--attribute", attr]
    if machine:
        cmd += ["--machine", machine]
    return cmd + [base, head]


def exactly(names) -> str:
    """An asv ``--bench`` regex selecting exactly these benchmarks (names with their parameters)."""
    return "|".join(f"^{re.escape(name)}$" for name in names)


def run_asv(base: str, head: str, *, repo: str = ".", env: Optional[dict] = None, timeout: Optional[float] = None,
            echo: bool = False, **options) -> AsvRun:
    """One ``asv continuous`` run (:func:`continuous_command` ``options``), parsed."""
    cmd = continuous_command(base, head, **options)
    proc = subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if echo:
        print(proc.stdout, end="", flush=True)
    return parse_output(proc.returncode, proc.stdout)


def run_gate(base: str, head: str, *, bench: str = GATE_BENCH, confirm: int = CONFIRM, factor: float = FACTOR,
             **options) -> GateResult:
    """The gate for ``base`` -> ``head``: ``asv continuous`` over ``bench``, then up to ``confirm``
    re-runs of the timed benchmarks it flagged worse. A re-run clears a flag only when it measures the
    benchmark within the factor (a ratio below it, significant or not); a flag no re-run clears fails
    the gate, as does a flag on a value without samples, or an asv error. ``options``: of
    :func:`run_asv` (repo, config, machine, attributes, env, timeout, echo)."""
    first = run_asv(base, head, bench=bench, factor=factor, **options)
    runs = [first]
    final = {name: ratio for name, ratio in first.worse.items() if name not in first.sampled}
    timed = {name: ratio for name, ratio in first.worse.items() if name in first.sampled}
    for _ in range(confirm):
        if not timed:
            break
        again = run_asv(base, head, bench=exactly(timed), factor=factor, **options)
        runs.append(again)
        # still worse: flagged again, or a ratio at or past the factor asv did not find significant
        # (a missing ratio, e.g. the benchmark failed, does not clear it either)
        timed = {name: again.ratios.get(name, ratio) for name, ratio in timed.items()
                 if name in again.worse or not again.ratios.get(name, float("inf")) < factor}
    return GateResult(runs, {**final, **timed})


def register_machine(machine: str, *, repo: str = ".", config: str = "asv.conf.json", env: Optional[dict] = None):
    """``asv machine --yes --machine NAME`` (asv keeps it in ``$HOME/.asv-machine.json``)."""
    subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--machine", machine, "--config", str(config)],
                   cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------
# the overlay environment
# ----------------------------------------------------------------------------------------------
def read_asv_config(path) -> dict:
    """asv.conf.json (asv allows ``//`` comment lines, json does not)."""
    text = Path(path).read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))


def overlay_config(base_config, out_path, *, prebuilt_dir, python: str = sys.executable) -> Path:
    """Write an asv configuration that is ``base_config`` with the overlay environment (see the module
    docstring): no requirements to install, and build/install/uninstall commands that run this file.
    ``python`` is the interpreter whose packages the benchmarks import and which builds the kernels."""
    conf = read_asv_config(base_config)
    # asv reads these relative to the configuration's folder; the new one may live elsewhere
    here = Path(base_config).resolve().parent
    for key in ("repo", "benchmark_dir", "env_dir", "results_dir", "html_dir"):
        if key in conf and not Path(conf[key]).is_absolute():
            conf[key] = str(here / conf[key])
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    script = Path(__file__).resolve()
    conf["matrix"] = {}
    conf["environment_type"] = "virtualenv"
    conf["build_command"] = [f"python {script} build {{build_dir}} {{build_cache_dir}} {prebuilt_dir} {python}"]
    conf["install_command"] = [f"python {script} install {{build_cache_dir}} {site}"]
    conf["uninstall_command"] = [f"return-code=any python {script} uninstall"]
    # every commit the gate compares keeps its (small, pure-Python plus one .so) build
    conf["build_cache_size"] = max(int(conf.get("build_cache_size", 0)), 16)
    out = Path(out_path)
    out.write_text(json.dumps(conf, indent=4))
    return out


def _kernel_sources(tree: Path) -> List[Path]:
    """The files of :data:`KERNEL_INPUTS` under ``tree``: those git tracks in a checkout (generated files,
    such as Cython's C++, are not sources), else all of them."""
    listed = subprocess.run(["git", "-C", str(tree), "ls-files", "-z", "--", *KERNEL_INPUTS], capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        return [tree / name for name in sorted(listed.stdout.decode().split("\0")) if name and (tree / name).is_file()]
    files: List[Path] = []
    for name in KERNEL_INPUTS:
        path = tree / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return files


def kernel_fingerprint(tree) -> str:
    """sha256 over the files the compiled extensions are built from (:data:`KERNEL_INPUTS`)."""
    tree = Path(tree)
    digest = hashlib.sha256()
    for f in _kernel_sources(tree):
        digest.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _store(stock: Path, built: List[Path]) -> None:
    stock.mkdir(parents=True, exist_ok=True)
    for ext in built:
        shutil.copy2(ext, stock / ext.name)
    (stock / "done").write_text("\n".join(p.name for p in built))


def _extensions(package_dir: Path) -> List[Path]:
    return sorted(p for p in package_dir.glob("_*.so")) + sorted(package_dir.glob("_*.pyd"))


def overlay_build(build_dir, cache_dir, prebuilt_dir, python) -> Path:
    """asv's build step: the commit's ``cbbench`` package with compiled kernels, into ``cache_dir``.
    The kernels come from ``prebuilt_dir/<fingerprint>`` or are built there with
    ``python setup.py build_ext --inplace`` (``python`` has torch, Cython and setuptools)."""
    build_dir, cache_dir = Path(build_dir), Path(cache_dir)
    stock = Path(prebuilt_dir) / kernel_fingerprint(build_dir)
    if not (stock / "done").exists():
        for old in _extensions(build_dir / PACKAGE):
            old.unlink()
        print(f"overlay build: compiling the kernels of {build_dir} (fingerprint {stock.name})", flush=True)
        subprocess.run([python, "setup.py", "build_ext", "--inplace"], cwd=build_dir, check=True)
        built = _extensions(build_dir / PACKAGE)
        if not built:
            raise SystemExit(f"overlay build: setup.py built no extension in {build_dir / PACKAGE}")
        _store(stock, built)
    else:
        print(f"overlay build: reusing the kernels {stock} (same sources)", flush=True)
    target = cache_dir / PACKAGE
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(build_dir / PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "_*.so", "_*.pyd"))
    for name in (stock / "done").read_text().split():
        shutil.copy2(stock / name, target / name)
    return target


def seed_prebuilt(prebuilt_dir, built_tree) -> Optional[Path]:
    """Offer the compiled kernels of an already built checkout (``built_tree/cbbench/_*.so``, e.g. the
    one this interpreter runs) to :func:`overlay_build`, under the fingerprint of that checkout's sources,
    when every extension is newer than every kernel source (make's rule: built after the last change).
    Commits with the same sources then compile nothing. Returns the stock folder, or ``None``."""
    tree = Path(built_tree)
    built = _extensions(tree / PACKAGE)
    sources = _kernel_sources(tree)
    if not built or not sources or min(p.stat().st_mtime for p in built) <= max(p.stat().st_mtime for p in sources):
        return None
    stock = Path(prebuilt_dir) / kernel_fingerprint(tree)
    _store(stock, built)
    return stock


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _own_site() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def overlay_install(cache_dir, overlay_site) -> None:
    """asv's install step, run by the environment's python: the package into its site-packages, and a
    ``.pth`` that appends ``overlay_site`` (the dependencies) to ``sys.path`` after it."""
    site = _own_site()
    overlay_uninstall()
    # hard links where the file system allows: no 20 MB of kernels written (and flushed to disk while
    # the next benchmark runs) for every switch between commits
    shutil.copytree(Path(cache_dir) / PACKAGE, site / PACKAGE, copy_function=_link_or_copy)
    (site / OVERLAY_PTH).write_text(str(overlay_site) + "\n")


def overlay_uninstall() -> None:
    target = _own_site() / PACKAGE
    if target.exists():
        shutil.rmtree(target)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("build", "install", "uninstall"):  # run by asv in the overlay environment
        step, args = argv[0], argv[1:]
        if step == "build" and len(args) == 4:
            overlay_build(*args)
        elif step == "install" and len(args) == 2:
            overlay_install(*args)
        elif step == "uninstall" and not args:
            overlay_uninstall()
        else:
            raise SystemExit(f"gate.py {step}: wrong arguments {args}")
        return 0

    import argparse

    parser = argparse.ArgumentParser(prog="python -m cbbench.bench.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="commit or branch to compare against")
    parser.add_argument("head", help="commit or branch under test")
    parser.add_argument("--factor", type=float, default=FACTOR, help=f"slowdown factor that fails (default {FACTOR})")
    parser.add_argument("--bench", default=GATE_BENCH, help=f"asv benchmark regex (default {GATE_BENCH!r})")
    parser.add_argument("--config", default="asv.conf.json", help="asv configuration (default asv.conf.json)")
    parser.add_argument("--machine", default=None, help="asv machine name (registered with asv machine --yes)")
    parser.add_argument("--attribute", "-a", action="append", default=[], help="asv benchmark attribute override")
    parser.add_argument("--confirm", type=int, default=CONFIRM,
                        help=f"re-runs of what the first run flags (default {CONFIRM})")
    parser.add_argument("--overlay", action="store_true", help="environment reusing this interpreter's packages")
    args = parser.parse_args(argv)
    if args.factor <= 1.0:
        parser.error(f"argument --factor: must be > 1, got {args.factor}")
    config = args.config
    if args.overlay:
        asv_dir = Path(read_asv_config(config).get("env_dir", ".asv/env")).parent
        asv_dir.mkdir(parents=True, exist_ok=True)
        config = str(overlay_config(config, asv_dir / "asv.overlay.conf.json", prebuilt_dir=asv_dir / "prebuilt"))
        seed_prebuilt(asv_dir / "prebuilt", Path(args.config).resolve().parent)  # this checkout, if built
    if args.machine:
        register_machine(args.machine, config=config)
    if args.confirm < 0:
        parser.error(f"argument --confirm: must be >= 0, got {args.confirm}")
    result = run_gate(args.base, args.head, config=config, factor=args.factor, bench=args.bench,
                      confirm=args.confirm, machine=args.machine, attributes=args.attribute, echo=True)
    print(result.summary())
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
