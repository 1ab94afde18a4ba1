"""The skip condition and markers of the CUDA test files (one definition for all of them)."""
import pytest
import torch

from cbbench import ops


def skip_reason():
    """Why CUDA tests cannot run here, or ``None``."""
    if not (torch.version.cuda and torch.cuda.is_available()):
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    if ops.kernel_module("cuda") is None:
        return f"cbbench._cuda is not built ({ops.kernel_status('cuda')})"
    return None


REASON = skip_reason()
CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
