"""Structure of the benchmark code: the harness does not import the benchmark package (provenance
helpers live in cbbench/provenance.py), one case table feeds every benchmark, and no code cites a design
document outside the repository."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_the_harness_never_imports_the_benchmark_package():
    offenders = [f"{p.name}: {name}" for p in sorted((ROOT / "cbbench" / "harness").glob("*.py"))
                 for name in _imports(p) if re.match(r"(\.\.bench|cbbench\.bench)(\.|$)", name)]
    assert not offenders, offenders
    # and at run time: importing the harness and training leaves cbbench.bench unloaded
    code = ("import sys, cbbench.harness, cbbench.harness.train, cbbench.provenance; "
            "sys.exit(1 if any(m.startswith('cbbench.bench') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_shapes_are_listed_only_in_the_case_table():
    shape = re.compile(r"[\"']\d+x\d+(?: (?:fp32|bf16|fp16|fp64))?[\"']")
    listed = {p.relative_to(ROOT).as_posix(): shape.findall(p.read_text())
              for p in [*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "cbbench" / "bench").glob("*.py")]}
    assert {k for k, v in listed.items() if len(v) > 2} == {"cbbench/bench/cases.py"}, listed


def test_no_citation_of_a_design_document_outside_the_repository():
    pattern = re.compile(r"DESIGN §|shared/DESIGN")
    paths = [*(ROOT / "cbbench").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "scripts").glob("*"),
             *(ROOT / "kernels").rglob("*.cu*"), *(ROOT / "kernels").rglob("*.h"), ROOT / "README.md",
             *(ROOT / "docs").rglob("*.md"), *(ROOT / ".github").rglob("*.y*ml")]
    cited = [p.relative_to(ROOT).as_posix() for p in paths if p.is_file() and pattern.search(p.read_text(errors="ignore"))]
    assert not cited, cited
    design = (ROOT / "docs" / "design.md").read_text()
    for section in ("Math", "Conventions", "The op path", "Performance model", "Distributed semantics",
                    "Benchmarks and the regression gate"):
        assert f"\n## {section}\n" in design
