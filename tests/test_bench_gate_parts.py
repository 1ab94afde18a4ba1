"""The regression gate's parts without running asv: reading asv's table, the confirmation rule, the
overlay environment's configuration, build cache and install steps. (The gate itself, end to end:
tests/test_bench_gate.py.)"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbbench.bench import gate

ROOT = Path(__file__).resolve().parents[1]
SPEED = "bench_speed.SoftmaxCPU.track_fwd_bwd('cpu', '256x1000 fp32')"
ACCURACY = "bench_accuracy.SyntheticLT.track_top1_error('cb_softmax')"

TABLE = f"""
| Change   | Before [f4223b7a] <base>   | After [2c318750] <same>   |   Ratio | Benchmark (Parameter)          |
|----------|----------------------------|---------------------------|---------|--------------------------------|
| +        | 486±30μs                   | 916±100μs                 |    1.89 | {SPEED} |
| +        | 26.349999999999994         | 40.35                     |    1.53 | {ACCURACY} |
| -        | 320±90μs                   | 213±40μs                  |    0.67 | bench_speed.FocalCPU.track_fwd('cpu', '8x10 fp32') |
|          | 12.2±2ms                   | 14.5±6ms                  | ~1.19   | bench_speed.FocalCPU.track_fwd('eager', '8x10 fp32') |

SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.
PERFORMANCE DECREASED.
"""


def test_parse_reads_the_marked_rows_and_which_have_samples():
    run = gate.parse_output(1, TABLE)
    assert run.worse == {SPEED: 1.89, ACCURACY: 1.53}
    assert run.better == {"bench_speed.FocalCPU.track_fwd('cpu', '8x10 fp32')": 0.67}
    assert run.sampled == {SPEED, "bench_speed.FocalCPU.track_fwd('cpu', '8x10 fp32')"}
    assert run.ratios["bench_speed.FocalCPU.track_fwd('eager', '8x10 fp32')"] == 1.19  # unmarked "~1.19"
    assert run.decreased and run.flagged
    calm = gate.parse_output(0, "BENCHMARKS NOT SIGNIFICANTLY CHANGED.")
    assert not calm.worse and not calm.flagged


def test_exactly_selects_only_the_named_parameter_combinations():
    import re

    regex = gate.exactly([SPEED])
    assert re.search(regex, SPEED)
    assert not re.search(regex, SPEED.replace("256x1000", "8192x1000"))
    assert not re.search(regex, SPEED.replace("fwd_bwd", "fwd"))


def _fake_runs(monkeypatch, outputs):
    calls = []

    def fake(base, head, *, bench, **options):
        calls.append(bench)
        return gate.parse_output(*outputs[len(calls) - 1])

    monkeypatch.setattr(gate, "run_asv", fake)
    return calls


def test_a_timed_flag_must_reproduce_and_an_error_flag_is_final(monkeypatch):
    again = f"| + | 1.0±0.1ms | 2.0±0.1ms | 2.00 | {SPEED} |\nPERFORMANCE DECREASED."
    calls = _fake_runs(monkeypatch, [(1, TABLE), (1, again), (1, again)])
    result = gate.run_gate("base", "head")
    assert result.failed and set(result.confirmed) == {SPEED, ACCURACY}
    assert calls[0] == gate.GATE_BENCH and calls[1] == calls[2] == gate.exactly([SPEED])  # only the timed one


def test_a_timed_flag_that_a_rerun_measures_within_the_factor_passes(monkeypatch):
    one = f"| + | 1.0±0.1ms | 1.3±0.1ms | 1.30 | {SPEED} |\nPERFORMANCE DECREASED."
    within = f"|   | 1.0±0.1ms | 1.05±0.1ms | 1.05 | {SPEED} |\nBENCHMARKS NOT SIGNIFICANTLY CHANGED."
    calls = _fake_runs(monkeypatch, [(1, one), (0, within), (1, one)])
    result = gate.run_gate("base", "head")
    assert not result.failed and not result.confirmed and len(calls) == 2
    assert "gate passed" in result.summary()
    _fake_runs(monkeypatch, [(1, one)])
    assert gate.run_gate("base", "head", confirm=0).failed  # no re-runs: asv's verdict


def test_a_rerun_that_is_not_significant_but_past_the_factor_does_not_clear(monkeypatch):
    one = f"| + | 1.0±0.1ms | 2.0±0.1ms | 2.00 | {SPEED} |\nPERFORMANCE DECREASED."
    unsure = f"|   | 1.0±0.5ms | 1.4±0.6ms | ~1.40 | {SPEED} |\nBENCHMARKS NOT SIGNIFICANTLY CHANGED."
    silent = "BENCHMARKS NOT SIGNIFICANTLY CHANGED."  # the row missing (e.g. the benchmark failed): no evidence
    _fake_runs(monkeypatch, [(1, one), (0, unsure), (0, silent)])
    result = gate.run_gate("base", "head")
    assert result.failed and result.confirmed == {SPEED: 1.40} and len(result.runs) == 3


def test_an_asv_error_without_a_table_fails_the_gate(monkeypatch):
    _fake_runs(monkeypatch, [(2, "asv.util.UserError: Unknown commit nope")])
    result = gate.run_gate("base", "nope")
    assert result.failed and "error" in result.summary()


def test_continuous_command_is_the_gate_command():
    cmd = gate.continuous_command("main", "HEAD", config="asv.conf.json", machine="m", attributes=["rounds=2"])
    assert cmd[1:4] == ["-m", "asv", "continuous"]
    assert cmd[cmd.index("--factor") + 1] == "1.15" and cmd[cmd.index("--bench") + 1] == gate.GATE_BENCH
    assert cmd[-2:] == ["main", "HEAD"] and "--attribute" in cmd and "--machine" in cmd
    assert "--no-only-changed" in cmd  # every row's ratio, for the re-runs' verdict


def test_overlay_config_installs_only_cbbench_and_keeps_paths(tmp_path):
    out = gate.overlay_config(ROOT / "asv.conf.json", tmp_path / "gate.json", prebuilt_dir=tmp_path / "stock")
    conf = json.loads(out.read_text())
    assert conf["matrix"] == {} and conf["environment_type"] == "virtualenv"
    assert conf["repo"] == str(ROOT) and conf["benchmark_dir"] == str(ROOT / "benchmarks")
    assert " build {build_dir} {build_cache_dir} " in conf["build_command"][0]
    assert str(tmp_path / "stock") in conf["build_command"][0] and sys.executable in conf["build_command"][0]
    assert "install {build_cache_dir} " in conf["install_command"][0]


def _tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "kernels").mkdir(parents=True)
    (tree / "kernels" / "k.h").write_text("int x;")
    (tree / "setup.py").write_text("")
    (tree / "cbbench").mkdir()
    (tree / "cbbench" / "__init__.py").write_text("")
    return tree


def test_fingerprint_follows_the_kernel_sources_only(tmp_path):
    tree = _tree(tmp_path)
    before = gate.kernel_fingerprint(tree)
    (tree / "cbbench" / "functional.py").write_text("# python only")
    assert gate.kernel_fingerprint(tree) == before
    (tree / "kernels" / "k.h").write_text("int y;")
    assert gate.kernel_fingerprint(tree) != before


def test_seeded_kernels_only_when_built_after_the_last_source_change(tmp_path):
    tree = _tree(tmp_path)
    ext = tree / "cbbench" / "_cpu.cpython-311-x86_64-linux-gnu.so"
    ext.write_bytes(b"built")
    old = time.time() - 100
    os.utime(ext, (old, old))  # built before the sources changed: stale
    assert gate.seed_prebuilt(tmp_path / "stock", tree) is None
    os.utime(ext, None)
    stock = gate.seed_prebuilt(tmp_path / "stock", tree)
    assert stock.name == gate.kernel_fingerprint(tree) and (stock / ext.name).read_bytes() == b"built"
    # a commit with these sources takes the seeded kernels and compiles nothing
    cache = tmp_path / "cache"
    cache.mkdir()
    (tree / "cbbench" / "functional.py").write_text("planted = 1\n")
    target = gate.overlay_build(tree, cache, tmp_path / "stock", "/nonexistent/python")
    assert (target / "functional.py").read_text() == "planted = 1\n" and (target / ext.name).exists()


def test_overlay_install_puts_the_package_first_and_the_dependencies_behind(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(gate, "_own_site", lambda: site)
    cache = tmp_path / "cache"
    (cache / "cbbench").mkdir(parents=True)
    (cache / "cbbench" / "__init__.py").write_text("")
    gate.overlay_install(cache, "/deps/site-packages")
    assert (site / "cbbench" / "__init__.py").exists()
    assert (site / gate.OVERLAY_PTH).read_text().strip() == "/deps/site-packages"
    gate.overlay_uninstall()
    assert not (site / "cbbench").exists()


def test_the_script_steps_run_without_cbbench_importable(tmp_path):
    """asv runs gate.py as a script in a bare virtualenv: it must need the standard library only."""
    script = Path(gate.__file__)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-S", "-I", str(script), "uninstall", "extra"], env=env,
                          capture_output=True, text=True)
    assert "wrong arguments" in proc.stderr  # it ran (and refused the argument), it did not fail to import


def test_gate_cli_rejects_a_factor_not_above_one(capsys):
    with pytest.raises(SystemExit):
        gate.main(["main", "HEAD", "--factor", "1.0"])
    assert "must be > 1" in capsys.readouterr().err
