"""The optional dependencies: what ``pip install cbbench`` leaves out, and the line that says what to install.

The losses, modules and fused heads need torch and numpy only. The command line -- the long-tail harness,
the benchmark runner and its report -- needs the ``bench`` extra (``pip install 'cbbench[bench]'``,
``pyproject.toml``): matplotlib, scikit-learn, Pillow and tqdm; the asv suite and the micro-benchmarks
add asv and pytest-benchmark. Importing :mod:`cbbench`, :mod:`cbbench.functional`, :mod:`cbbench.nn` or
:mod:`cbbench.linear` imports none of them (``tests/test_install.py`` checks it in a fresh interpreter).
"""
from __future__ import annotations

import importlib.util
from typing import Iterable, List, Optional

EXTRA = "bench"
# import name -> the package that provides it, for every module of the `bench` extra
BENCH_MODULES = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "PIL": "Pillow", "tqdm": "tqdm",
                 "asv": "asv", "pytest_benchmark": "pytest-benchmark"}
# what the command line imports (the harness, the runner, the report); asv and pytest-benchmark are run
# by their own commands
CLI_MODULES = ("matplotlib", "sklearn", "PIL", "tqdm")


def missing(modules: Iterable[str] = CLI_MODULES) -> List[str]:
    """The packages providing ``modules`` that are not installed."""
    return [BENCH_MODULES.get(m, m) for m in modules if importlib.util.find_spec(m) is None]


def install_line(what: str, packages: Iterable[str]) -> str:
    """One line: ``what`` needs ``packages``, which come with the ``bench`` extra, and the command."""
    packages = list(packages)
    return (f"{what} needs {', '.join(packages)}, from the '{EXTRA}' extra (`pip install cbbench` installs the "
            f"losses alone): pip install 'cbbench[{EXTRA}]'")


def extra_module(exc: ImportError) -> Optional[str]:
    """The package of the ``bench`` extra whose absence raised ``exc``, or ``None``."""
    name = getattr(exc, "name", None) or ""
    return BENCH_MODULES.get(name.split(".")[0]) if isinstance(exc, ModuleNotFoundError) else None
