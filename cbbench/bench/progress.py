"""One progress bar over the phases of ``cbbench bench``, with the time left.

Every step of the job (a speed case, a head case, a method's accuracy runs, a dataset's beta experiment,
the report) carries an estimate of its seconds on the reference machine (:mod:`cbbench.bench.plan`).
The bar fills by estimated work done; the time left is the estimated work left at the pace measured so
far (``tqdm``'s rate), so a slower or busier machine shows a longer time left after its first steps. On a
terminal it is one bar; otherwise (a log, CI) one line per phase with the time left.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Tuple


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class PhaseProgress:
    """``steps``: ``[(phase, estimated seconds)]`` in the order they run. :meth:`phase` announces a phase,
    :meth:`done` completes its next step."""

    def __init__(self, steps: List[Tuple[str, float]], *, bar: bool = None, stream=None):
        self.stream = stream or sys.stderr
        self.left: Dict[str, List[float]] = {}
        for phase, seconds in steps:
            self.left.setdefault(phase, []).append(float(seconds))
        self.total = sum(seconds for _, seconds in steps)
        self.done_work = 0.0
        self.began = time.perf_counter()
        self.current = None
        self.bar = None
        if bar is None:
            bar = self.stream.isatty()
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left")

    def time_left(self) -> float:
        """Estimated work left at the pace so far (the estimates' own seconds before any work is done)."""
        left = self.total - self.done_work
        elapsed = time.perf_counter() - self.began
        if self.done_work <= 0 or elapsed <= 0:
            return left
        return left * elapsed / self.done_work

    def phase(self, name: str, text: str = None) -> None:
        """Start phase ``name``; ``text`` describes it in a line above the bar (none without it)."""
        self.current = name
        if self.bar is not None:
            self.bar.set_description_str(name)
            if text:
                self.bar.write(f"== {text}", file=self.stream)
        elif text:
            print(f"== {text} (about {_clock(self.time_left())} left of the whole job)", file=self.stream, flush=True)

    def done(self, name: str = None) -> None:
        """One step of phase ``name`` (default: the current one) is done."""
        steps = self.left.get(name or self.current) or [0.0]
        work = steps.pop(0)
        self.done_work += work
        if self.bar is not None:
            self.bar.update(work)

    def skip(self, name: str) -> None:
        """Phase ``name`` does not run: its work leaves the total."""
        steps = self.left.pop(name, [])
        self.total -= sum(steps)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()

    def log(self, text: str) -> None:
        """A line above the bar (or on its own without one)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
