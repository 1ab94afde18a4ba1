"""Import time, each in a fresh interpreter (asv ``timeraw_``)."""


def timeraw_import_torch():
    """The floor under cbbench's own import time."""
    return "import torch"


def timeraw_import_cbbench():
    return "import cbbench"


def timeraw_import_cbbench_and_kernels():
    return """
import cbbench
cbbench.ops.kernel_module("cpu")
"""
