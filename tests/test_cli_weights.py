"""The `cbbench weights` job and `python -m cbbench.info`."""
import json
import subprocess
import sys

import pytest

from cbbench import cli
from cbbench.commands.weights import weights_table, write_weights_report


def test_weights_command_prints_table_and_writes_pngs(tmp_path, capsys):
    rc = cli.main(["weights", "--counts", "100,10,1", "--beta", "0.9,0.999", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| class | n | E_n (beta=0.9)" in out
    # beta=0.9, n=1: E=1; the weights of the 3 classes sum to 3
    lines = [ln for ln in out.splitlines() if ln.startswith("| 2 |")]
    assert lines and "| 1 | " in lines[0]
    for name in ("effective_number.png", "class_weights.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_weights_table_values():
    table = weights_table([1, 2], [0.5])
    row0 = [c.strip() for c in table.splitlines()[2].split("|")[1:-1]]
    row1 = [c.strip() for c in table.splitlines()[3].split("|")[1:-1]]
    assert row0 == ["0", "1", "1", "1.2000"]
    assert row1 == ["1", "2", "1.5", "0.8000"]


@pytest.mark.parametrize("args, message", [
    (["--counts", "10,-1"], "non-negative"),
    (["--counts", "10,x"], "--counts: 'x' is not a number"),
    (["--beta", "1.0"], "beta must be in"),
])
def test_weights_command_bad_input(args, message, capsys, tmp_path):
    assert cli.main(["weights", "--out", str(tmp_path)] + args) == 2
    assert message in capsys.readouterr().err


def test_write_weights_report_returns_paths(tmp_path):
    paths = write_weights_report([5, 3, 0, 1], out_dir=str(tmp_path / "sub"))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["effective_number.png", "class_weights.png"]


def test_info_reports_backends():
    res = subprocess.run([sys.executable, "-m", "cbbench.info", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(res.stdout)
    assert info["backends"]["reference"] == "available"
    assert set(info["backends"]) == {"reference", "cpu", "cuda"}
    assert info["torch"].startswith("2.")


def test_import_does_not_initialise_cuda():
    code = "import torch, cbbench; print(torch.cuda.is_initialized())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_write_weights_report_with_counts_beyond_float32(tmp_path):
    # the plot's grid was built from a float32 tensor: counts above 3.4e37 gave an infinite grid and
    # "counts must be finite, got [nan, inf, ...]"
    paths = write_weights_report([1e300, 10, 1], betas=(0.9, 0.999), out_dir=str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["effective_number.png", "class_weights.png"]
