"""The README is a front door and the docs hold the rest (issue 25): every page under docs/ is linked from the
README, every relative link and anchor resolves, the quick start is exactly two commands, the README stays
under 250 lines, every measured table and headline number names its run (the runs table of
docs/results.md), and no page names a package registry's host."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUN_ID = re.compile(r"\b[Rr]uns? ([A-Z]\d+)\b")
# a measured quantity: a ratio (1.6x, x1.5), a share (12 %, 0.08 of), a time (190 s, 7.5 minutes), a speed
MEASURED = re.compile(r"\d(?:\.\d+)?x\b|\bx\d|\d ?%|\d ?(?:s|ms|µs|us|minutes|min)\b|GB/s")


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def _links(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / link.split("#")[0]).resolve() for link in _links(README) if not link.startswith("http")}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert PAGES and not missing, missing


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in [README, *PAGES]:
        for link in _links(page):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    quick = text[text.index("## Quick start"):]
    block = quick[quick.index("```"):quick.index("```", quick.index("```") + 3)]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.split("#")[0].strip()]
    assert commands == ["make bench", "make test"]


def _runs() -> dict:
    """The runs table of docs/results.md: id -> its row."""
    text = (DOCS / "results.md").read_text()
    section = text[text.index("## Runs"):]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if re.fullmatch(r"[A-Z]\d+", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_every_measured_table_of_the_results_names_a_run_it_lists():
    runs = _runs()
    assert runs
    text = (DOCS / "results.md").read_text()
    blocks = re.split(r"\n\s*\n", text[text.index("## Runs"):])
    unnamed = []
    for i, block in enumerate(blocks[1:], start=1):
        if block.lstrip().startswith("|") and i > 1:  # blocks[0] is the heading, blocks[1] the runs table
            caption = blocks[i - 1]
            cited = RUN_ID.findall(caption)
            if not cited or any(run not in runs for run in cited):
                unnamed.append(block.splitlines()[0][:80])
    assert not unnamed, unnamed


def test_every_measured_number_of_the_readme_names_its_run():
    runs = _runs()
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    unnamed = []
    for paragraph in re.split(r"\n\s*\n", text):
        for item in re.split(r"\n(?=[*-] )", paragraph):
            line = re.sub(r"\([^)]*\)\]?\([^)]*\)", "", item)  # links do not count as numbers
            if MEASURED.search(line.replace("2 CPU cores", "").replace("2-core", "")):
                cited = RUN_ID.findall(item)
                if not cited or any(run not in runs for run in cited):
                    unnamed.append(item.strip()[:100])
    assert not unnamed, unnamed


def test_no_page_names_a_package_registry_host():
    hosts = re.compile(r"pypi\.org|pythonhosted\.org|download\.pytorch\.org|anaconda\.org")
    assert not [p.name for p in [README, *PAGES] if hosts.search(p.read_text())]
