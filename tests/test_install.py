"""The front door: what an install gives and says (issue 25).

* importing the losses imports torch and numpy only -- nothing of the ``bench`` extra -- and the command
  line names the extra when a package of it is missing;
* a compiled module built against another torch is never imported: the first-use build takes over
  (loaded from its cache here; the real compile is ``scripts/install_check.sh``, run by CI);
* without a compiler, or after a failed first-use build, one loud warning names the cost and the fix, the
  losses run the reference and ``python -m cbbench.info`` says why;
* setup.py finds the torch of the environment being installed into from inside pip's build isolation.

Each scenario runs in a fresh interpreter on a copy of the package (``tmp_path/pkg/cbbench``) with its
own build record and first-use cache, so nothing here touches the installed package or the user's cache.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cbbench
from cbbench import extras, jit

ROOT = Path(__file__).resolve().parents[1]
# what `pip install 'cbbench[bench]'` adds (pyproject.toml), by import name, plus scipy (scikit-learn's)
EXTRA_MODULES = ("matplotlib", "sklearn", "scipy", "PIL", "tqdm", "asv", "pytest_benchmark", "balanced_loss")

# as if not installed: `import name` raises ModuleNotFoundError, importlib.util.find_spec(name) is None
BLOCK = textwrap.dedent("""
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None
""")


def _run(code, *, env=None, cwd=None, timeout=300):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# dependencies
# ----------------------------------------------------------------------------------------------
def test_the_losses_import_torch_and_numpy_only_even_without_the_extra():
    code = BLOCK.format(blocked=set(EXTRA_MODULES)) + textwrap.dedent("""
        import torch
        before = {m.split(".")[0] for m in sys.modules}
        import cbbench, cbbench.functional, cbbench.nn, cbbench.linear, cbbench.info
        z = torch.randn(4, 3, requires_grad=True)
        cbbench.functional.sigmoid_focal_loss(z, torch.tensor([0, 1, 2, 0])).backward()
        cbbench.ClassBalancedLoss([5, 3, 1])(z, torch.tensor([0, 1, 2, 0]))
        new = {m.split(".")[0] for m in sys.modules} - before - set(sys.stdlib_module_names)
        # Cython-compiled modules register its runtime (cython_runtime, _cython_<version>)
        new = {m for m in new if m != "cython_runtime" and not m.startswith("_cython_")}
        print(sorted(new))
        assert new <= {"cbbench", "numpy"}, new
    """)
    res = _run(code)
    assert res.returncode == 0, res.stderr[-3000:]


def test_the_command_line_names_the_extra_when_a_package_of_it_is_missing():
    code = BLOCK.format(blocked={"matplotlib"}) + textwrap.dedent("""
        from cbbench import cli
        raise SystemExit(cli.main(["weights", "--counts", "3,2,1", "--out", "w"]))
    """)
    res = _run(code)
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "matplotlib" in line and "pip install 'cbbench[bench]'" in line


def test_a_package_of_the_extra_missing_at_run_time_is_named_too(capsys, monkeypatch):
    from cbbench import cli

    def run_without_asv(args):
        raise ModuleNotFoundError("No module named 'asv'", name="asv")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["weights"].set_defaults(func=run_without_asv)
    assert cli.main(["weights", "--counts", "3,2,1"]) == 2
    assert "asv, from the 'bench' extra" in capsys.readouterr().err


def test_the_missing_extra_exit_code_is_the_usage_code_of_the_table():
    from cbbench import cli
    from cbbench.harness.errors import EXIT_USAGE

    assert cli.EXIT_MISSING_EXTRA == EXIT_USAGE


def test_the_bench_extra_lists_what_the_command_line_imports():
    text = (ROOT / "pyproject.toml").read_text()
    bench = text[text.index("bench = ["):text.index("]", text.index("bench = ["))]
    for package in extras.BENCH_MODULES.values():
        assert f'"{package}' in bench, package
    deps = text[text.index("dependencies = ["):text.index("]", text.index("dependencies = ["))]
    assert [line.strip() for line in deps.splitlines()[1:] if line.strip()] == ['"torch>=2.5",', '"numpy>=1.24",']


# ----------------------------------------------------------------------------------------------
# the build record
# ----------------------------------------------------------------------------------------------
def _record(torch_version, modules=None, git=None):
    import torch

    return {"torch": torch_version, "torch_git": git if git is not None else torch.version.git_version,
            "modules": {"cbbench._C": "built", "cbbench._cpu": "built"} if modules is None else modules}


def test_the_record_verdict():
    import torch

    assert jit._installed_verdict("cbbench._C", None) is None  # no record: a build without one, imported
    assert jit._installed_verdict("cbbench._C", _record(torch.__version__)) is None
    other = jit._installed_verdict("cbbench._C", _record("2.0.0"))
    assert "built against torch 2.0.0" in other and torch.__version__ in other
    assert "built against" in jit._installed_verdict("cbbench._C", _record(torch.__version__, git="0" * 40))
    why = "not built at install: no torch to build against (...): compiled on first use"
    assert jit._installed_verdict("cbbench._cpu", _record(torch.__version__, {"cbbench._cpu": why})) == why
    assert "has no cbbench._C" in jit._installed_verdict("cbbench._C", _record(torch.__version__, {}))


# ----------------------------------------------------------------------------------------------
# a package copy whose install-time build was made for another torch
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def stale_package(tmp_path):
    """``tmp_path/pkg/cbbench``: this package's Python files and compiled modules, with a build record
    saying they were built against torch 1.0.0, and the kernel sources beside it (a checkout)."""
    if not all(name in sys.modules for name in ("cbbench._C", "cbbench._cpu")):
        pytest.skip("the compiled modules are not loaded here")
    pkg = tmp_path / "pkg"
    shutil.copytree(Path(cbbench.__file__).parent, pkg / "cbbench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "_build_info.json", "_sources"))
    for name in ("cbbench._C", "cbbench._cpu"):
        shutil.copy2(sys.modules[name].__file__, pkg / "cbbench")
    for part in ("include", "ops", "cpu"):
        shutil.copytree(ROOT / "kernels" / part, pkg / "kernels" / part, ignore=shutil.ignore_patterns("_cpu.*"))
    shutil.copy2(ROOT / "kernels" / "cpu" / "_cpu.pyx", pkg / "kernels" / "cpu")
    (pkg / "cbbench" / "_build_info.json").write_text(json.dumps(_record("1.0.0")))
    return pkg


def _env(pkg, cache, **extra):
    return {"PYTHONPATH": str(pkg), "CBBENCH_CACHE_DIR": str(cache), **extra}


REPORT = """
    import json, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch, cbbench, cbbench.functional as F
        from cbbench import jit, ops
        import cbbench.nn, cbbench.linear  # later imports: no second warning
    z = torch.randn(8, 5, requires_grad=True)
    F.softmax_cross_entropy(z, torch.randint(0, 5, (8,))).backward()
    print(json.dumps({"file": cbbench.__file__, "report": jit.report(),
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, jit.KernelsMissingWarning)],
                      "uses_kernels": ops.uses_kernels("auto", z),
                      "modules": {n: getattr(sys.modules.get(n), "__file__", None)
                                  for n in ("cbbench._C", "cbbench._cpu")},
                      "build_dir": str(jit.build_dir(jit.extensions.source_root()))}))
"""


def _report(pkg, cache, **env):
    res = _run(REPORT, env=_env(pkg, cache, **env), cwd=str(pkg.parent))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(pkg)), out["file"]
    return out, res.stderr


def test_a_build_for_another_torch_is_not_imported_and_the_cached_first_use_build_is(stale_package, tmp_path):
    cache = tmp_path / "cache"
    off, _ = _report(stale_package, cache, CBBENCH_JIT="0")
    assert not off["uses_kernels"] and off["modules"] == {"cbbench._C": None, "cbbench._cpu": None}
    assert "built against torch 1.0.0" in off["warnings"][0] and "CBBENCH_JIT=0" in off["warnings"][0]
    # the first-use build's cache, filled with this session's modules (compiling them is install_check.sh's job)
    folder = Path(off["build_dir"])
    assert folder.parent == cache / "kernels"
    (folder / "cbbench").mkdir(parents=True)
    for name in ("cbbench._C", "cbbench._cpu"):
        shutil.copy2(sys.modules[name].__file__, folder / "cbbench")
    on, err = _report(stale_package, cache)
    assert on["uses_kernels"] and not on["warnings"], err[-3000:]
    for name, path in on["modules"].items():
        assert path.startswith(str(folder)), (name, path)  # never the copy built for torch 1.0.0
        assert on["report"][name]["origin"] == f"first-use build, cached in {folder}"
    assert "compiling" not in err


def test_no_compiler_one_loud_warning_the_reference_and_info_says_why(stale_package, tmp_path):
    cache = tmp_path / "cache"
    out, err = _report(stale_package, cache, CXX=str(tmp_path / "no-such-c++"))
    assert not out["uses_kernels"]
    assert len(out["warnings"]) == 1, out["warnings"]
    text = out["warnings"][0]
    for part in ("NO COMPILED KERNELS for CPU tensors", "no C++ compiler", "no-such-c++", "Cost:", "reference",
                 "Fix:", "pip install"):
        assert part in text, (part, text)
    info = _run("from cbbench.info import main; main()", env=_env(stale_package, cache, CXX=str(tmp_path / "x")),
                cwd=str(tmp_path))
    assert info.returncode == 0, info.stderr[-3000:]
    path = next(line for line in info.stdout.splitlines() if line.startswith("path cpu"))
    assert "REFERENCE (pure PyTorch, slow)" in path and "no C++ compiler" in path
    assert info.stderr.count("NO COMPILED KERNELS") == 1  # shown by default, once


def test_a_failed_first_use_build_says_why_and_is_not_retried(stale_package, tmp_path):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'broken-c++: error: this compiler compiles nothing' >&2\nexit 1\n")
    compiler.chmod(0o755)
    cache = tmp_path / "cache"
    out, err = _report(stale_package, cache, CXX=str(compiler), CBBENCH_OPENMP="0")
    assert "cbbench: compiling its kernels (cbbench._C, cbbench._cpu)" in err and "first use" in err
    assert "FAILED" in err
    assert not out["uses_kernels"] and len(out["warnings"]) == 1
    assert "first-use build failed" in out["warnings"][0] and "log:" in out["warnings"][0]
    folder = Path(out["build_dir"])
    assert (folder / "_C.failed").is_file() and (folder / "_cpu.failed").is_file()
    again, err2 = _report(stale_package, cache, CXX=str(compiler), CBBENCH_OPENMP="0")
    assert "compiling" not in err2  # not retried
    assert "to try again" in again["warnings"][0]


# ----------------------------------------------------------------------------------------------
# setup.py inside pip's build isolation
# ----------------------------------------------------------------------------------------------
def test_setup_finds_the_target_environments_torch_from_inside_build_isolation(tmp_path, monkeypatch):
    """pip's isolated build runs setup.py with the target interpreter, hiding its site-packages behind
    PYTHONPATH (a sitecustomize that drops them) and PYTHONNOUSERSITE; setup.py asks the interpreter
    without those and finds the torch it will run with."""
    import site
    import torch

    hide = tmp_path / "isolation"
    hide.mkdir()
    packages = sorted({os.path.dirname(os.path.dirname(torch.__file__)), *site.getsitepackages()})
    (hide / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:] = [p for p in sys.path if p not in {packages!r}]\n")
    isolated = dict(os.environ, PYTHONPATH=str(hide), PYTHONNOUSERSITE="1")
    hidden = subprocess.run([sys.executable, "-c", "import torch"], env=isolated, capture_output=True, cwd=tmp_path)
    assert hidden.returncode != 0, "the stand-in isolation did not hide torch"
    spec = importlib.util.spec_from_file_location("cbbench_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    monkeypatch.setenv("PYTHONPATH", str(hide))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    site_dir, version = setup._target_torch_site()
    assert version == torch.__version__
    assert Path(site_dir) == Path(torch.__file__).parents[1]
