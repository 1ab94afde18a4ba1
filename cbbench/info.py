"""``python -m cbbench.info``: which path a loss call takes on CPU and CUDA tensors and why (the fused kernels,
and where they came from, or the reference and why), versions, the device, threads.

Importing cbbench here does what any import does: where the installed package has no kernels built against
this torch it compiles them first (:mod:`cbbench.jit`).
"""
from __future__ import annotations

import json
import os
import platform
import sys


def collect() -> dict:
    """Everything a benchmark record or bug report needs about this machine and build."""
    import torch

    from . import __version__, jit, ops

    info = {
        "path cpu": loss_path("cpu"),
        "path cuda": loss_path("cuda"),
        "cbbench": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "backends": {
            "reference": "available",
            "cpu": ops.kernel_status("cpu"),
            "cuda": ops.kernel_status("cuda"),
        },
    }
    info["ops"] = "available" if ops.ops_available() else ops.kernel_status("cpu")  # cbbench._C
    info["compiled_modules"] = jit.report()
    record = jit.installed_record()
    info["install_build"] = (None if record is None else
                             {k: record.get(k) for k in ("torch", "torch_found", "modules", "cpu_build")})
    info["first_use_cache"] = str(jit.cache_root())
    cpu = ops.kernel_module("cpu")
    if cpu is not None and hasattr(cpu, "build_info"):
        info["cpu_kernels"] = cpu.build_info()
    # Only look at the GPU when torch was built with CUDA; is_available() does not create a context.
    if torch.version.cuda is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu"] = None
    return info


def loss_path(device: str) -> str:
    """Which implementation a loss call with ``backend="auto"`` runs on ``device`` tensors, and why."""
    import torch

    from . import jit, ops
    from .ops.loading import KERNEL_MODULES

    forced = os.environ.get("CBBENCH_BACKEND", "").strip().lower()
    if forced and forced != "auto":
        return f"{forced} (the environment variable CBBENCH_BACKEND={forced} overrides backend='auto')"
    if device == "cuda" and torch.version.cuda is None:
        return "none: this torch has no CUDA"
    status = ops.kernel_status(device)
    if status != "available":
        return f"REFERENCE (pure PyTorch, slow): {status}"
    origin = jit.report().get(KERNEL_MODULES[device], {}).get("origin")
    return f"fused kernels ({KERNEL_MODULES[device]}: {origin})"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cbbench.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = {k: v for k, v in info.items() if k not in ("backends", "compiled_modules", "install_build")}
    rows.update({f"backend {name}": status for name, status in info["backends"].items()})
    for name, entry in info["compiled_modules"].items():
        rows[f"module {name}"] = (f"loaded ({entry['origin']})" if entry["loaded"]
                                  else f"missing ({entry['origin']}: {entry['reason']})")
    build = info["install_build"]
    rows["install build"] = ("no record (built before records, or copied in)" if build is None else
                             f"torch {build['torch']} ({build['torch_found']})" if build["torch"] else
                             f"no kernels ({build['torch_found']})")
    width = max(len(k) for k in rows) + 2
    for key, value in rows.items():
        print(f"{key:<{width}}{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
