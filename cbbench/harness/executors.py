"""Where the runs of a comparison train: one after another in this process (``serial``, the default), or as
Ray tasks spread over the CPUs and GPUs of a cluster (``ray``; the optional extra ``pip install 'cbbench[ray]'``).

Everything else a comparison does happens once, in the process that called
:func:`~cbbench.harness.compare.run_comparison` (the *driver*), whichever executor trains: planning the grid,
loading and checking the data and every run's configuration, holding the output folder's lock, keeping what
``--resume`` finds, and writing each finished run with the same atomic per-run writer
(cbbench/harness/compare.py, cbbench/harness/output.py). An executor only turns the runs still to train
into :class:`Outcome` objects, in the order they finish.

**Ray.** Every run is one task that requests ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (a fraction
packs several runs on one GPU; Ray gives the task its GPU through ``CUDA_VISIBLE_DEVICES``, so the run
trains on ``cuda``). The results come **back to the driver, which writes them**; the workers write nothing:

* the driver holds the output folder's lock (an ``flock`` seen on its own host only, and one that network
  file systems often do not honour), so "one writer per folder" stays true on a cluster;
* no node needs the output folder mounted (a driver connected through Ray Client may be a laptop);
* ``--resume``, ``results.csv``, the summary and the plots are the serial path's code, not a copy of it;
* a result is a few kB (its largest part, the per-class accuracy, is 8,142 numbers for iNaturalist).

The data are loaded and checked once, by the driver, and put into Ray's object store, which hands them to
every node: data held in memory (the built-in datasets, CIFAR, features, small images) need no shared
storage. Streamed image files and ``--init-weights`` are read by the workers at the paths the driver
saw, so those must be on storage every node mounts at the same path.

**Failures.** A task that raises, or whose worker process or node dies, is retried up to ``retries``
times (Ray's ``max_retries`` with ``retry_exceptions``); after that its run is a :class:`RunFailure`,
reported by the comparison (summary, ``runs/<run>/error.txt``, exit code 7), never dropped. An interrupt
(Ctrl-C, SIGTERM) cancels every task that has not finished; the finished ones were written as they came.
A run that needs a GPU on a cluster without one (or CPUs and GPUs no node has) is refused before any
task is submitted. Every task checks that its node runs the driver's cbbench and torch (else it fails,
saying which node): results of mixed versions would be averaged silently otherwise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .errors import Terminated, UsageError

__all__ = ["EXECUTORS", "RAY_EXTRA", "DEFAULT_RETRIES", "RunFailure", "Outcome", "SerialExecutor", "RayExecutor",
           "make_executor", "import_ray"]

EXECUTORS = ("serial", "ray")
RAY_EXTRA = "pip install 'cbbench[ray]'"
DEFAULT_RETRIES = 2
# how long the driver waits for finished tasks before it refreshes the progress counts
_POLL_S = 0.5
# how long cancelled tasks may take to stop by themselves before their workers are killed
_CANCEL_GRACE_S = 5.0


@dataclasses.dataclass
class RunFailure:
    """A run that failed after its retries: ``error`` in one line, ``details`` the full report (the
    remote traceback), ``attempts`` the times it started (0: it never started)."""

    run_id: str
    error: str
    details: str
    attempts: int


@dataclasses.dataclass
class Outcome:
    """A run's end: its ``result`` (the dict :func:`~cbbench.harness.train.train_run` returns) or its
    ``failure``."""

    run_id: str
    result: Optional[dict] = None
    failure: Optional[RunFailure] = None


class SerialExecutor:
    """Every run in this process, one after another, in grid order (the default, and the only executor
    under ``torchrun``). A run that raises stops the comparison, as it always has."""

    name = "serial"
    local_device = True  # runs train on this machine's devices: plan and check them here

    @contextlib.contextmanager
    def session(self):
        yield self

    def run_device(self, device):
        return device

    def execute(self, todo: Sequence, data, train: Callable, *, progress: bool,
                running: Callable[[int], None]) -> Iterator[Outcome]:
        for planned in todo:
            running(1)
            yield Outcome(planned.run_id, result=train(planned.config, data, progress=progress))


def import_ray():
    """The ``ray`` module, or a UsageError naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--executor ray needs Ray, which is not installed here ({exc}): {RAY_EXTRA}, "
                         "or pip install 'ray>=2.10', on the driver and every node") from None
    return ray


def _resource(value, name: str, *, zero: bool):
    """A task's resource request: a number > 0 (>= 0 with ``zero``); above 1, a whole number (Ray's rule)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise UsageError(f"{name} must be a number {'>= 0' if zero else '> 0'}, got {value!r}")
    if value > 1 and value != int(value):
        raise UsageError(f"{name} {value!r}: above 1 a run takes whole units (Ray's rule); a fraction below 1 "
                         "packs several runs on one unit")
    return int(value) if value == int(value) and value >= 1 else float(value)


class RayExecutor:
    """Every run as one Ray task (see the module docstring). ``address`` is ``ray.init``'s: ``None``
    connects where ``RAY_ADDRESS`` says, else to the cluster ``ray start`` runs on this machine, else starts
    a Ray instance on this machine for the comparison (all its CPUs); ``"auto"`` connects to a running
    cluster only; ``"HOST:PORT"`` or ``"ray://HOST:10001"`` (Ray Client) to another one. A process that
    already called ``ray.init`` keeps its connection. ``gpus_per_run=None``: 1 for runs on
    CUDA, 0 on the CPU. ``init_options`` go to ``ray.init`` (e.g. ``num_cpus`` for a local instance)."""

    name = "ray"
    local_device = False  # runs train on the cluster's devices, resolved there

    def __init__(self, address: Optional[str] = None, *, cpus_per_run: Union[int, float] = 1,
                 gpus_per_run: Optional[Union[int, float]] = None, retries: int = DEFAULT_RETRIES,
                 init_options: Optional[dict] = None):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise UsageError(f"address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")
        if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
            raise UsageError(f"retries must be a whole number >= 0, got {retries!r}")
        self.address = address
        self.cpus_per_run = _resource(cpus_per_run, "cpus per run (--cpus-per-run)", zero=False)
        self.gpus_per_run = _resource(gpus_per_run, "gpus per run (--gpus-per-run)", zero=True)
        self.retries = int(retries)
        self.init_options = dict(init_options or {})
        self._ray = None
        self._nodes = []
        self._gpus = None  # the GPUs each task requests, decided by run_device

    # -- connection ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self):
        """Connected to the cluster (started here, and shut down after, unless ``ray.init`` was already
        called in this process)."""
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            self._init(ray)
            started = True
        elif self.address is not None:
            raise UsageError(f"Ray is already initialised in this process; address {self.address!r} does not apply "
                             "(the comparison uses that connection)")
        try:
            self._ray = ray
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            yield self
        finally:
            self._ray = None
            if started:
                with contextlib.suppress(Exception):
                    ray.shutdown()

    def _init(self, ray) -> None:
        options = {"logging_level": logging.WARNING, **self.init_options}
        if self.address is None:  # if it starts an instance here: no dashboard server taking the cores
            options.setdefault("include_dashboard", False)
        main = threading.current_thread() is threading.main_thread()
        # ray.init replaces the SIGTERM handler by sys.exit: SIGTERM must keep stopping a comparison as
        # SIGINT does (cbbench/cli.py), which cancels the tasks and keeps the finished runs
        previous = signal.getsignal(signal.SIGTERM) if main else None
        address = self.address if self.address is not None else _default_address()
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = "start or find a Ray instance on this machine" if self.address is None else \
                f"connect to the Ray cluster at {self.address!r}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            token = "" if self.address in (None, "auto") or os.environ.get("RAY_AUTH_MODE") else \
                " (a cluster with token authentication, as 'ray start' has by default in Ray 2.60, also needs " \
                "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token)"
            raise UsageError(f"cannot {where}: {first}; start one with 'ray start --head', or check --address"
                             f"{token}") from None
        except SystemExit as exc:  # SIGTERM while ray.init held its own handler: stop as cbbench/cli.py does
            if main and exc.code == signal.SIGTERM:
                raise Terminated() from None
            raise
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _where(self) -> str:
        cpus = sum(n["Resources"].get("CPU", 0) for n in self._nodes)
        gpus = sum(n["Resources"].get("GPU", 0) for n in self._nodes)
        try:
            at = f"the Ray cluster at {self._ray.get_runtime_context().gcs_address}"
        except Exception:
            at = "the Ray cluster"
        return f"{at} ({len(self._nodes)} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s))"

    # -- checks before submission -------------------------------------------------------------------------

    def run_device(self, device) -> str:
        """The device every run trains on, from ``device`` (``auto``, ``cpu`` or ``cuda``), ``gpus_per_run``
        and the cluster's GPUs; a run that needs a GPU, or more CPUs or GPUs than any node has, is refused
        here (UsageError), before anything is submitted."""
        has_gpu = any(n["Resources"].get("GPU", 0) > 0 for n in self._nodes)
        gpus = self.gpus_per_run
        name = "auto" if device in (None, "auto") else str(device)
        if name == "auto":
            name = "cuda" if (gpus or (gpus is None and has_gpu)) else "cpu"
        if name == "cpu":
            if gpus:
                raise UsageError(f"--gpus-per-run {gpus:g} reserves GPUs for runs that train on the CPU (--device cpu):"
                                 " pass --device cuda (or auto), or remove --gpus-per-run")
            gpus = 0
        elif name.startswith("cuda"):
            if name != "cuda":
                raise UsageError(f"--device {name}: under --executor ray each run trains on the GPU Ray gives it; "
                                 "pass --device cuda")
            if gpus == 0:
                raise UsageError("--device cuda with --gpus-per-run 0: a run on CUDA needs a GPU or a share of one "
                                 "(e.g. --gpus-per-run 0.25), or pass --device cpu")
            gpus = 1 if gpus is None else gpus
        else:
            raise UsageError(f"--device {name}: under --executor ray a run trains on cpu or cuda (or auto)")
        if gpus and not has_gpu:
            raise UsageError(f"the runs train on CUDA ({gpus:g} GPU each), but {self._where()} has no GPU; nothing was "
                             "submitted: connect to a cluster with GPU nodes (--address), or pass --device cpu")
        fits = [n for n in self._nodes if n["Resources"].get("CPU", 0) >= self.cpus_per_run
                and n["Resources"].get("GPU", 0) >= gpus]
        if not fits:
            raise UsageError(f"no node of {self._where()} has {self.cpus_per_run:g} CPU(s)"
                             + (f" and {gpus:g} GPU(s)" if gpus else "") + " for one run, so the runs would wait "
                             "forever; nothing was submitted: lower --cpus-per-run / --gpus-per-run")
        self._gpus = gpus
        return name

    # -- the runs -----------------------------------------------------------------------------------------

    def execute(self, todo: Sequence, data, train: Callable, *, progress: bool,
                running: Callable[[int], None]) -> Iterator[Outcome]:
        """Submit every run of ``todo`` at once (Ray queues what the cluster cannot start yet) and yield
        each outcome as its task ends; closing the generator (an interrupt, an error while writing)
        cancels the tasks still queued or running. ``running`` hears how many runs train now."""
        ray = self._ray
        if ray is None or self._gpus is None:
            raise RuntimeError("RayExecutor.execute runs inside session() after run_device()")
        if not todo:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # a tiny actor on the driver's node counts the attempts that started: the progress bar's "running"
        # and the attempts of a failed run (a task that never started did not use any)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        starts = ray.remote(_starts_class()).options(num_cpus=0, scheduling_strategy=here).remote()
        task = ray.remote(_run_task)
        resources = dict(num_cpus=self.cpus_per_run, num_gpus=self._gpus, max_retries=self.retries,
                         retry_exceptions=True)
        data_ref = ray.put(data)
        expect = _environment()
        threads = max(1, int(self.cpus_per_run))
        refs, pending = {}, []
        with _remembered(signal.SIGTERM) as sigterm:
            try:
                for planned in todo:
                    ref = task.options(name=f"cbbench {planned.run_id}", **resources).remote(
                        train, planned.config, data_ref, planned.run_id, threads, expect, starts)
                    refs[ref] = planned.run_id
                    pending.append(ref)
                ended, counts = set(), {}
                asked = starts.snapshot.remote()  # answered in the background: the loop never waits for it
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
                    if ready and pending:  # everything else that has ended too, without waiting
                        more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                        ready += more
                    if ray.wait([asked], timeout=0)[0]:
                        # the counter is for the progress bar and the report: never a reason to stop
                        with contextlib.suppress(Exception):
                            counts = ray.get(asked)
                        asked = starts.snapshot.remote()
                    for ref in ready:
                        run_id = refs[ref]
                        ended.add(run_id)
                        try:
                            result = ray.get(ref)
                        except Exception as exc:  # the task's own error, a dead worker or node: the run failed
                            attempts = _snapshot(ray, starts, timeout=10).get(run_id, counts.get(run_id, 0))
                            failure = RunFailure(run_id, _one_line(exc), _plain(str(exc)), attempts)
                            yield Outcome(run_id, failure=failure)
                        else:
                            yield Outcome(run_id, result=result)
                    running(sum(1 for r in counts if r not in ended))
            except KeyboardInterrupt as exc:
                if sigterm and not isinstance(exc, Terminated):  # Ray's wait or get made it a plain one
                    raise Terminated() from None
                raise
            finally:
                if pending:  # an interrupt, or the caller stopped: nothing is left running
                    _cancel(ray, pending)
                with contextlib.suppress(Exception):
                    ray.kill(starts)


def _cancel(ray, refs: list) -> None:
    """Cancel the tasks of ``refs``: the queued ones never start, a running one stops at its next Python
    step (Ray raises KeyboardInterrupt in it); one still running after ``_CANCEL_GRACE_S`` (stuck in C code)
    has its worker killed. Killing first (``force=True``) races with a task that ends at that moment, which
    aborts the driver in Ray 2.60 ("Tried to complete task that was not pending")."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    try:
        _, stuck = ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_GRACE_S)
    except Exception:
        stuck = refs
    for ref in stuck:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


@contextlib.contextmanager
def _remembered(signum: int):
    """The signals ``signum`` that arrive while the block runs (a list, empty if none). Ray's ``wait`` and
    ``get`` run the Python signal handlers themselves and turn whatever they raise into a plain
    KeyboardInterrupt: SIGTERM's :class:`~cbbench.harness.errors.Terminated` (cbbench/cli.py) would read
    as SIGINT, so the handler in place is wrapped to remember it."""
    seen = []
    previous = signal.getsignal(signum) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):  # the default (the process ends), ignored, or not the main thread
        yield seen
        return

    def remember(number, frame):
        seen.append(number)
        previous(number, frame)

    signal.signal(signum, remember)
    try:
        yield seen
    finally:
        signal.signal(signum, previous)


def _default_address() -> Optional[str]:
    """``ray.init``'s own choice when no address is given (``None``: ``RAY_ADDRESS``, else the cluster that
    ``ray start`` recorded on this machine, else a new instance), except that a recorded cluster which no
    longer answers (stopped without ``ray stop``, which leaves the record behind) is skipped with a note:
    ``ray.init`` would wait for it for many minutes. ``"local"`` then starts a new instance."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    try:  # where `ray start` records its cluster: Ray's own lookup (private; without it, Ray decides)
        from ray._private.services import find_bootstrap_address

        recorded = find_bootstrap_address(None)
        host, _, port = recorded.rpartition(":") if recorded else ("", "", "")
        port = int(port) if recorded else None
    except Exception:
        return None
    if not recorded:
        return None
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError:
        print(f"note: the Ray cluster that 'ray start' recorded on this machine ({recorded}) does not answer (stopped "
              "without 'ray stop'?); starting a Ray instance for this comparison instead", file=sys.stderr,
              flush=True)
        return "local"


def make_executor(executor: Union[str, SerialExecutor, RayExecutor, None] = None, **options):
    """An executor from its name (``serial``, ``ray``) and options, or the executor object itself."""
    if executor is None or executor == "serial":
        if options:
            raise UsageError(f"{', '.join(sorted(options))}: option(s) of the Ray executor; pass executor='ray'")
        return SerialExecutor()
    if executor == "ray":
        return RayExecutor(**options)
    if isinstance(executor, (SerialExecutor, RayExecutor)):
        if options:
            raise UsageError("pass the options to the executor object, not beside it")
        return executor
    raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


# -- what runs on the workers ---------------------------------------------------------------------------------

def _starts_class():
    """The Ray actor that counts how many times each run's task started. Defined here, in a function, so
    that it travels by value: its process then imports Ray alone, not cbbench and torch (1.5 s of CPU
    taken from the runs at the start of every grid, measured on 2 cores)."""

    class Starts:
        def __init__(self):
            self.starts = {}

        def started(self, run_id: str) -> int:
            self.starts[run_id] = self.starts.get(run_id, 0) + 1
            return self.starts[run_id]

        def snapshot(self) -> dict:
            return dict(self.starts)

    return Starts


def _snapshot(ray, starts, timeout: float) -> dict:
    try:
        return ray.get(starts.snapshot.remote(), timeout=timeout)
    except Exception:  # the counter is for the progress bar and the report: never a reason to stop
        return {}


@functools.lru_cache(maxsize=None)
def _environment() -> dict:
    """What must match between the driver and every node for their results to belong in one table (once
    per process: a worker keeps the code it imported)."""
    import torch

    import cbbench
    from ..provenance import git_commit

    return {"cbbench": cbbench.__version__, "torch": torch.__version__, "commit": git_commit()}


class EnvironmentMismatch(RuntimeError):
    """A node runs another cbbench or torch than the driver."""


def _run_task(train: Callable, config, data, run_id: str, threads: int, expect: dict, starts) -> dict:
    """One run, in a Ray worker: count the start, check the node's versions, train without progress bars
    (a worker's output goes to the driver's terminal, line by line), return the result."""
    import ray
    import torch

    with contextlib.suppress(Exception):
        ray.get(starts.started.remote(run_id), timeout=30)
    here = _environment()
    differ = {k: (here[k], expect[k]) for k in ("cbbench", "torch") if here[k] != expect[k]}
    if here["commit"] and expect["commit"] and here["commit"] != expect["commit"]:
        differ["commit"] = (here["commit"], expect["commit"])
    if differ:
        node = ray.util.get_node_ip_address()
        raise EnvironmentMismatch(f"node {node} runs " + ", ".join(f"{k} {h}" for k, (h, _) in differ.items())
                                  + ", the driver " + ", ".join(f"{k} {e}" for k, (_, e) in differ.items())
                                  + ": install the same versions on every node")
    # arrays from the object store are read-only views of shared memory; training reads them only, but
    # torch.as_tensor warns about (and must never write into) them: a private copy per run
    arrays = {name: np.array(getattr(data, name)) for name in ("x_train", "y_train", "x_test", "y_test")
              if isinstance(getattr(data, name), np.ndarray) and not getattr(data, name).flags.writeable}
    if arrays:
        data = dataclasses.replace(data, **arrays)
    torch.set_num_threads(threads)
    return train(config, data, progress=False)


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours the task's name in its reports)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _one_line(exc: BaseException) -> str:
    """A failed task's error in one line: the original exception of a task that raised, or the first
    line of Ray's report (a dead worker or node, a cancelled task)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return _plain(f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__)
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return _plain(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)
