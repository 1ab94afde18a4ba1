"""``python -m cbbench.info``: versions, which kernels were built, the device, threads."""
from __future__ import annotations

import json
import platform
import sys


def collect() -> dict:
    """Everything a benchmark record or bug report needs about this machine and build."""
    import torch

    from . import __version__, ops

    info = {
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


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cbbench.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = {k: v for k, v in info.items() if k != "backends"}
    rows.update({f"backend {name}": status for name, status in info["backends"].items()})
    width = max(len(k) for k in rows) + 2
    for key, value in rows.items():
        print(f"{key:<{width}}{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
