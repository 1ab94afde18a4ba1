"""The regression gate, proven: it fails on a planted 2x slowdown and on a planted accuracy drop, and
passes a pair of identical commits three times.

The test clones the repository's HEAD (the committed state, not the working tree) into a temporary
folder, commits there, from HEAD ("base"):

* ``slow``: ``cbbench.functional.softmax_cross_entropy`` does its work twice: the loss is computed twice
  and the mean of the two returned, so forward **and** backward run twice (0.5 (l + l) = l and
  0.5 g + 0.5 g = g exactly: the benchmark's reference check passes). Dropping the first result instead
  doubled only the forward: after the CPU kernels got faster (issue 28) that measured 1.4x in process at
  256x1000, too close to the factor and the noise of a shared machine (the gate missed it in 3 of 4
  attempts); this plant measured 1.8x in process and 4.7-6.3x in the gate's asv runs (its backward also
  scales the gradient by 0.5 and adds two of them);
* ``weights-ignored``: the same function replaces its class weights by uniform ones (class-balanced
  softmax becomes plain softmax: an accuracy drop on the long-tailed data; the weighted kernel path
  stays as it was. Dropping the weight (``None``) instead got the unchanged speed benchmark flagged
  x1.54-x1.57 in 2 of 3 gate runs, and the flag survived its re-runs (x1.17-x1.93), which in-process
  timings of the two paths did not reproduce; with uniform weights 1 of 4 first runs flagged it (x1.57)
  and its re-run cleared it);
* ``same``: an empty commit on top of base;

and runs the gate (:func:`cbbench.bench.gate.run_gate`: ``asv continuous --factor 1.15`` and re-runs of
what it flags) on one speed benchmark (fused CPU softmax CE, 256x1000) and one accuracy benchmark
(synthetic-LT top-1 error of ``cb_softmax``, mean of 3 seeds), in the gate's overlay environment
(asv's virtualenv holding only the commit's cbbench, this interpreter's packages behind it, the kernels
compiled once, or taken from this checkout when built from the committed sources). The CPU benchmarks
run on one thread timed by the process's CPU time: the machines this runs on are shared.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cbbench.bench import gate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PLANTING_POINT = Path("cbbench") / "functional.py"
PLANTED_FUNCTION = "softmax_cross_entropy"
SPEED = "bench_speed.SoftmaxCPU.track_fwd_bwd('cpu', '256x1000 fp32')"
ACCURACY = "bench_accuracy.SyntheticLT.track_top1_error('cb_softmax')"
ROUNDS = 3  # per commit, interleaved with the other commit's
MACHINE = "gate-test"

SLOWDOWN = f'''

# planted by tests/test_bench_gate.py: the softmax cross-entropy does its work twice, forward and backward
# (the mean of two equal losses: the same value and gradient, exactly)
_planted_{PLANTED_FUNCTION} = {PLANTED_FUNCTION}


def {PLANTED_FUNCTION}(*args, **kwargs):
    return 0.5 * (_planted_{PLANTED_FUNCTION}(*args, **kwargs) + _planted_{PLANTED_FUNCTION}(*args, **kwargs))
'''

WEIGHTS_IGNORED = f'''

# planted by tests/test_bench_gate.py: the class weights are ignored (replaced by uniform ones, so the
# call takes the same weighted kernel path as before: only the accuracy changes)
_planted_{PLANTED_FUNCTION} = {PLANTED_FUNCTION}


def {PLANTED_FUNCTION}(logits, target, weight=None, *args, **kwargs):
    uniform = None if weight is None else torch.ones_like(torch.as_tensor(weight))
    return _planted_{PLANTED_FUNCTION}(logits, target, uniform, *args, **kwargs)
'''


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _plant(repo: Path, branch: str, code: str, message: str) -> None:
    _git(repo, "checkout", "-q", "-b", branch, "base")
    target = repo / PLANTING_POINT
    text = target.read_text() if target.exists() else ""
    if not re.search(rf"^def {PLANTED_FUNCTION}\(", text, flags=re.M):
        pytest.fail(f"the planting point is gone: {PLANTING_POINT} defines no top-level {PLANTED_FUNCTION}(); "
                    "move the planted regressions of tests/test_bench_gate.py to the public function that now "
                    "computes the class-balanced softmax cross-entropy")
    target.write_text(text + code)
    _git(repo, "commit", "-q", "-am", message)


def make_gate_repo(tmp: Path) -> dict:
    """The throwaway clone with its planted branches, the overlay asv configuration, the environment of
    the asv runs and a registered asv machine, under ``tmp``."""
    missing = [m for m in ("asv", "virtualenv") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{missing} not installed: the gate needs the bench extra (pip install -e '.[bench]')")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("the gate test needs git and a git checkout of cbbench")
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(repo)], check=True)
    _git(repo, "config", "user.email", "gate-test@cbbench.invalid")
    _git(repo, "config", "user.name", "gate test")
    _git(repo, "tag", "base")
    _plant(repo, "slow", SLOWDOWN, "planted: softmax cross-entropy does its work twice")
    _plant(repo, "weights-ignored", WEIGHTS_IGNORED, "planted: softmax cross-entropy ignores the class weights")
    _git(repo, "checkout", "-q", "-b", "same", "base")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "no change")
    config = gate.overlay_config(repo / "asv.conf.json", tmp / "asv.gate.json", prebuilt_dir=tmp / "prebuilt")
    # the kernels this interpreter runs, when built from the committed sources: nothing to compile
    gate.seed_prebuilt(tmp / "prebuilt", ROOT)
    env = dict(os.environ)
    env.update({
        "HOME": str(tmp / "home"),            # asv's machine file, not the user's
        "OMP_NUM_THREADS": "1",               # one thread: nothing waits for a descheduled sibling
        "CBBENCH_ASV_CPU_CLOCK": "process",   # CPU time of the process: other processes' time slices don't count
        "CBBENCH_ASV_METHODS": "cb_softmax",  # the accuracy benchmark trains only the gated method
        "CBBENCH_CUDA": "0",                  # CPU kernels only: the planted paths are CPU paths
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    })
    env.pop("CBBENCH_BACKEND", None)
    (tmp / "home").mkdir()
    gate.register_machine(MACHINE, repo=str(repo), config=str(config), env=env)
    return {"repo": str(repo), "config": str(config), "env": env}


@pytest.fixture(scope="module")
def gate_repo(tmp_path_factory):
    return make_gate_repo(tmp_path_factory.mktemp("gate"))


def run_pair(gate_repo, head):
    """The gate from ``base`` to ``head`` on the gated subset."""
    result = gate.run_gate("base", head, bench=gate.exactly([SPEED, ACCURACY]), repo=gate_repo["repo"],
                           config=gate_repo["config"], machine=MACHINE, attributes=[f"rounds={ROUNDS}"],
                           env=gate_repo["env"], timeout=900)
    print(f"\nbase -> {head}:\n{result.summary()}")
    return result


def _explain(result: gate.GateResult) -> str:
    """The gate's summary and the end of every asv run's output, for a failing assertion."""
    tails = [f"--- run {i + 1}, exit {run.returncode} ---\n{run.output[-2500:]}" for i, run in enumerate(result.runs)]
    return "\n".join([result.summary(), *tails])


def _ran_both(run: gate.AsvRun) -> None:
    for name in (SPEED, ACCURACY):
        # asv lists every benchmark it ran in its progress output; a skipped or failed one says so
        assert re.search(re.escape(name.split("(")[0]) + r"\s+ok", run.output), run.output[-4000:]


def test_gate_fails_a_planted_2x_slowdown(gate_repo):
    result = run_pair(gate_repo, "slow")
    if not result.failed:
        # On a busy shared machine a contention episode of seconds can slow the base's measurements by
        # as much as the planted 2x (docs/results.md, "The regression gate, measured"): one more attempt, shown.
        print(f"\nTHE GATE MISSED THE PLANTED SLOWDOWN ONCE (a noisy machine?); attempt 2:\n{_explain(result)}")
        result = run_pair(gate_repo, "slow")
    first = result.first
    assert first.decreased and first.returncode != 0, first.output[-4000:]
    _ran_both(first)
    # the planted ratio is 2; on a busy shared machine single runs have measured it from 1.26 to 3.1
    assert first.worse.get(SPEED, 0) > gate.FACTOR and ACCURACY not in first.worse, first.worse
    assert result.failed and set(result.confirmed) == {SPEED} and len(result.runs) == 1 + gate.CONFIRM, \
        _explain(result)


def test_gate_fails_a_planted_accuracy_drop(gate_repo):
    result = run_pair(gate_repo, "weights-ignored")
    first = result.first
    assert first.decreased and first.returncode != 0, first.output[-4000:]
    _ran_both(first)
    # cb_softmax about 26.5 % -> plain softmax about 40.3 % top-1 error on synthetic-LT (x1.51-x1.53)
    assert first.worse.get(ACCURACY, 0) >= 1.3, first.worse
    # an error rate has no samples: the first flag is final and never re-run. (The speed benchmark, whose
    # code path the plant leaves as it was, may be flagged by the machine's noise in the first run too --
    # 1 of 4 runs here -- and is then re-run like any timed flag: the gate's false-alarm behaviour, which
    # test_gate_passes_identical_commits measures.)
    assert result.failed and result.confirmed.get(ACCURACY) == first.worse[ACCURACY], _explain(result)
    assert all(ACCURACY not in run.ratios for run in result.runs[1:]), _explain(result)
    assert set(result.confirmed) <= {ACCURACY, SPEED}, _explain(result)
    if SPEED in first.worse:
        print(f"\nthe unchanged speed benchmark was flagged in the first run (noise of the machine):\n"
              f"{_explain(result)}")


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_gate_passes_identical_commits(gate_repo, attempt):
    result = run_pair(gate_repo, "same")
    _ran_both(result.first)
    assert ACCURACY not in result.first.worse  # training is deterministic: identical errors
    assert not result.failed, _explain(result)
