"""Write the asv configuration for a GPU runner: asv.conf.json with the torch pin replaced by a CUDA
build (``TORCH_SPEC``, default ``torch==2.11.0``, fetched from ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL``
as the workflow sets them) and everything else unchanged, so the CPU and GPU suites are one suite.

    python .github/asv_gpu_conf.py > asv.gpu.conf.json
"""
import json
import os
import re
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "asv.conf.json").read_text()
conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
spec = os.environ.get("TORCH_SPEC", "torch==2.11.0")
name, _, version = spec.partition("==")
if name.strip() != "torch" or not version:
    raise SystemExit(f"TORCH_SPEC must look like torch==X.Y.Z, got {spec!r}")
conf["matrix"]["req"]["torch"] = [version.strip()]
print(json.dumps(conf, indent=4))
