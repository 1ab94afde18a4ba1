"""Smoke test of an installed cbbench (run by scripts/install_check.sh in a fresh virtual environment that holds
torch, numpy and the cbbench wheel only):

    python scripts/install_smoke.py install|first-use

* the compiled CPU modules are loaded, from where the argument says: the wheel's own build (``install``)
  or a first-use build (``first-use``);
* a loss call takes the fused path: the profiler sees the fused CPU kernel's op
  (``cbbench::softmax_cross_entropy_fused``), and the value and gradient match the reference;
* ``python -m cbbench.info`` says so;
* nothing of the ``bench`` extra is installed or imported, and the command line names the extra to install.

Prints one line per check; exits non-zero on the first failure.
"""
import importlib.util
import subprocess
import sys

WHERE = {"install": "install-time build", "first-use": "first-use build"}


def check(condition, what):
    if not condition:
        raise SystemExit(f"install smoke: FAILED: {what}")
    print(f"install smoke: ok: {what}", flush=True)


def main(expected: str) -> int:
    import torch

    import cbbench
    import cbbench.functional as F
    from cbbench import jit, ops

    check(cbbench.__file__.find("site-packages") >= 0, f"cbbench is the installed package ({cbbench.__file__})")
    report = jit.report()
    for name in ("cbbench._C", "cbbench._cpu"):
        entry = report[name]
        check(entry["loaded"] and entry["origin"].startswith(WHERE[expected]),
              f"{name} loaded from the {WHERE[expected]} ({entry})")
    z = torch.randn(64, 10, requires_grad=True)
    y = torch.randint(0, 10, (64,))
    w = cbbench.class_balanced_weights([500, 300, 200, 100, 60, 40, 20, 10, 6, 3], beta=0.999)
    check(ops.uses_kernels("auto", z), "backend 'auto' resolves to the CPU kernels")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = F.softmax_cross_entropy(z, y, w)
        loss.backward()
    names = {event.name for event in prof.events()}
    check("cbbench::softmax_cross_entropy_fused" in names, "the loss ran the fused CPU kernel (profiler)")
    r = z.detach().double().requires_grad_(True)
    ref = F.softmax_cross_entropy(r, y, w, backend="reference")
    ref.backward()
    check(torch.allclose(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
          and torch.allclose(z.grad.double(), r.grad, rtol=1e-4, atol=1e-6), "loss and gradient match the reference")
    info = subprocess.run([sys.executable, "-m", "cbbench.info"], capture_output=True, text=True, check=True).stdout
    path = next(line for line in info.splitlines() if line.startswith("path cpu"))
    check("fused kernels" in path and WHERE[expected] in path, f"cbbench.info: {path}")
    extra = ("matplotlib", "sklearn", "PIL", "tqdm", "asv", "pytest_benchmark")
    check(all(importlib.util.find_spec(m) is None for m in extra), "no package of the bench extra is installed")
    cli = subprocess.run([sys.executable, "-m", "cbbench", "bench"], capture_output=True, text=True)
    check(cli.returncode == 2 and "pip install 'cbbench[bench]'" in cli.stderr,
          f"the command line names the extra: {cli.stderr.strip()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in WHERE:
        raise SystemExit(f"usage: python {sys.argv[0]} {'|'.join(WHERE)}")
    raise SystemExit(main(sys.argv[1]))
