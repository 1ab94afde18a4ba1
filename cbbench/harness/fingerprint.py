"""The identity of a run's data: a fingerprint recorded in each result (``data_fingerprint``) and compared
by ``--resume`` (:mod:`cbbench.harness.compare`), so runs trained on other data are never kept beside
new ones, even when the class counts agree.

* Data held in memory (the built-in datasets, CIFAR, features, images decoded into memory): SHA-256 of
  the arrays the run trains and evaluates on -- ``x_train``, ``y_train``, ``x_test``, ``y_test`` after
  the long-tail cut and the cast, with their dtypes and shapes. A features file rewritten in place, or
  another ``--data-dir`` with the same class counts, changes it; the same data copied elsewhere do not.
* Image files streamed from disk: SHA-256 of each training and evaluation file's path (relative to the
  data root, so moving the whole folder keeps it), label, size and modification time. Hashing the
  contents would read every image once more per command (ImageNet-LT: 165,000 files); an image rewritten
  in place changes its modification time, and so does a copy that does not preserve times (``cp``
  without ``-p``), which ``--resume`` then refuses rather than guess.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["arrays_digest", "files_digest", "data_fingerprint"]

PREFIX = "sha256:"


def arrays_digest(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over each array's dtype, shape and bytes (C order)."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        if array.dtype == object:
            raise TypeError("arrays_digest hashes numeric arrays; object arrays have no stable bytes")
        h.update(f"{array.dtype.str}{array.shape};".encode())
        h.update(memoryview(array).cast("B"))
    return PREFIX + h.hexdigest()


def files_digest(splits: Sequence[tuple], root: Optional[str]) -> str:
    """SHA-256 over ``(split, path relative to root, label, size, mtime in ns)`` of every file; ``splits``
    holds ``(name, paths, labels, sizes, mtimes)`` per split."""
    h = hashlib.sha256()
    for name, paths, labels, sizes, mtimes in splits:
        h.update(f"[{name}:{len(paths)}]".encode())
        for path, label, size, mtime in zip(paths, labels, sizes, mtimes):
            rel = os.path.relpath(path, root) if root else path
            h.update(f"{rel}\0{int(label)}\0{int(size)}\0{int(mtime)}\n".encode("utf-8", "surrogateescape"))
    return PREFIX + h.hexdigest()


def data_fingerprint(data) -> str:
    """The fingerprint of a :class:`~cbbench.harness.datasets.LongTailedData` (computed once, then kept on it):
    the loader's for streamed image files, the arrays' digest for everything held in memory."""
    if data.fingerprint is None:
        if data.kind == "image_files":
            raise ValueError(f"{data.name}: streamed image data carry their fingerprint from the loader")
        data.fingerprint = arrays_digest([data.x_train, data.y_train, data.x_test, data.y_test])
    return data.fingerprint
