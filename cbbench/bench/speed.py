"""Speed comparison: every loss x shape x dtype x implementation on one device, timed by the shared core.

    python -m cbbench.bench.speed --device {cpu,cuda} [--quick] [--out DIR]

Prints a table (median ms of forward+backward and of forward only, the ratio to the bandwidth floor,
and the speed-up against the peers measured in the same run) and writes ``speed.csv`` and
``speed.json`` (each row with the run's environment record) into DIR. Every implementation is checked
against the reference on the timed inputs before it is timed.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import torch

from . import bandwidth
from .cases import DTYPE_SHORT, LOSS_TITLES, LOSSES, Case, make_inputs, suite
from .providers import IMPLEMENTATIONS, MODES, PEERS, PROVIDERS, check, reference_values, step
from .records import environment
from .timing import FULL, QUICK, TimingPolicy, measure


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def run_case(case: Case, impls: Sequence[str], policy: TimingPolicy, copy_gbps: float,
             log: Callable[[str], None] = lambda s: None) -> List[dict]:
    """Rows for one case: each implementation checked against the reference, then timed."""
    rows = []
    inputs = None
    expected = None
    for impl in impls:
        provider = PROVIDERS[impl]
        row = {"loss": case.loss, "shape": case.shape, "n": case.n, "c": case.c, "dtype": case.dtype,
               "device": case.device, "impl": impl, "status": "ok", "note": ""}
        for mode in MODES:
            row[f"floor_bytes_{mode}"] = bandwidth.floor_bytes(case, mode)
        reason = provider.unavailable(case)
        if reason is not None:
            row.update(status="skipped", note=reason)
            rows.append(row)
            continue
        if inputs is None:
            inputs = make_inputs(case)
            expected = reference_values(case, inputs)
        try:
            fn = provider.build(case, inputs)
            try:
                row["max_error_vs_tolerance"] = check(fn, case, inputs, expected)
            except AssertionError as exc:
                row.update(status="mismatch", note=str(exc))
            for mode in MODES:
                m = measure(step(fn, inputs, mode), case.device, policy)
                row[f"{mode}_ms"] = m.median_ms
                row[f"{mode}_min_ms"] = m.min_ms
                row[f"{mode}_iqr_ms"] = m.iqr_ms
                row[f"{mode}_samples"] = m.n
                row["clock"] = m.clock
                row[f"gbps_{mode}"] = bandwidth.effective_gbps(row[f"floor_bytes_{mode}"], m.median_ms)
                row[f"frac_copy_{mode}"] = row[f"gbps_{mode}"] / copy_gbps
                row[f"x_floor_{mode}"] = m.median_ms / bandwidth.floor_ms(row[f"floor_bytes_{mode}"], copy_gbps)
        except Exception as exc:  # a peer that cannot run this case (e.g. eager bf16 with fp32 weight)
            row.update(status="error", note=_short_error(exc))
            if not isinstance(exc, (RuntimeError, TypeError, ValueError)):
                traceback.print_exc()
        log(_progress_line(case, row))
        rows.append(row)
    del inputs, expected
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def _progress_line(case: Case, row: dict) -> str:
    if "fwd_bwd_ms" in row:
        timing = f"fwd+bwd {row['fwd_bwd_ms']:9.3f} ms  fwd {row['fwd_ms']:9.3f} ms"
    else:
        timing = ""
    note = "" if row["status"] == "ok" else f"  [{row['status']}: {row['note']}]"
    return f"  {case.label():32s} {row['impl']:9s} {timing}{note}"


def add_peer_ratios(rows: List[dict]) -> None:
    """``speedup_vs_<peer>`` = peer's fwd+bwd median / this row's, for peers timed on the same case."""
    key = lambda r: (r["loss"], r["shape"], r["dtype"], r["device"])  # noqa: E731
    timed = {(key(r), r["impl"]): r["fwd_bwd_ms"] for r in rows if r.get("fwd_bwd_ms") is not None
             and r["status"] == "ok"}
    for r in rows:
        for peer in PEERS:
            other = timed.get((key(r), peer))
            if other is not None and r.get("fwd_bwd_ms"):
                r[f"speedup_vs_{peer}"] = other / r["fwd_bwd_ms"]


def run_speed(device: str = "cpu", *, quick: bool = False, losses: Iterable[str] = LOSSES,
              impls: Iterable[str] = IMPLEMENTATIONS, cases: Optional[List[Case]] = None,
              policy: Optional[TimingPolicy] = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the speed comparison; returns ``{"env", "copy_gbps", "policy", "rows"}``."""
    device_type = torch.device(device).type
    impls = [i for i in impls]
    for impl in impls:
        if impl not in PROVIDERS:
            raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    if device_type == "cuda" and not (torch.version.cuda and torch.cuda.is_available()):
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    policy = policy or (QUICK if quick else FULL)
    cases = cases if cases is not None else suite(device_type, quick=quick, losses=tuple(losses))
    env = environment(device)
    began = time.perf_counter()
    copy_gbps = bandwidth.copy_bandwidth_gbps(device)
    log(f"{env['device_name']}: device copy bandwidth {copy_gbps:.1f} GB/s")
    rows: List[dict] = []
    for case in cases:
        rows.extend(run_case(case, impls, policy, copy_gbps, log))
    add_peer_ratios(rows)
    env["load_average_1min_after"] = environment(device)["load_average_1min"]
    return {"env": env, "copy_gbps": copy_gbps, "wall_s": time.perf_counter() - began,
            "policy": vars(policy) if hasattr(policy, "__dict__") else policy.__dict__,
            "rows": rows}


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def format_table(result: dict, markdown: bool = False) -> str:
    """The speed table: one line per case and implementation that ran; skipped ones listed below."""
    head = ["loss", "shape", "dtype", "impl", "fwd+bwd ms", "fwd ms", "x floor", "GB/s", "vs eager",
            "vs compile", "note"]
    lines = []
    skipped = {}
    for r in result["rows"]:
        if r["status"] == "skipped":
            skipped.setdefault(r["impl"], r["note"])
            continue
        vs = lambda p: _fmt(r.get(f"speedup_vs_{p}"), ".2f") + ("x" if r.get(f"speedup_vs_{p}") else "")  # noqa
        note = "" if r["status"] == "ok" else f"{r['status'].upper()}: {r['note']}"
        lines.append([LOSS_TITLES[r["loss"]], r["shape"], DTYPE_SHORT[r["dtype"]], r["impl"],
                      _fmt(r.get("fwd_bwd_ms"), ".3f"), _fmt(r.get("fwd_ms"), ".3f"),
                      _fmt(r.get("x_floor_fwd_bwd"), ".1f"), _fmt(r.get("gbps_fwd_bwd"), ".1f"),
                      vs("eager"), vs("compile"), note[:70]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
    else:
        widths = [max(len(head[i]), *(len(row[i]) for row in lines)) if lines else len(head[i])
                  for i in range(len(head))]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    for impl, reason in skipped.items():
        out.append(("" if not markdown else "\n") + f"not run: {impl} ({reason})")
    return "\n".join(out)


def header_text(result: dict) -> str:
    env = result["env"]
    load = env.get("load_average_1min"), env.get("load_average_1min_after")
    return (f"{env['device_name']} | torch {env['torch']} (CUDA {env['torch_cuda']}) | cbbench {env['cbbench']} "
            f"commit {(env.get('commit') or 'unknown')[:12]} | {env['date']}\n"
            f"copy bandwidth {result['copy_gbps']:.1f} GB/s | medians of >= {result['policy']['min_repeat']} "
            f"samples ({env['device'].startswith('cuda') and 'CUDA events, L2 flushed' or 'host clock'}) | "
            f"1-min load average before/after: {load[0]}/{load[1]} on {env['cpu_count']} CPUs")


CSV_ENV_FIELDS = ("device_name", "torch", "torch_cuda", "cbbench", "commit", "date", "load_average_1min")


def write_results(result: dict, out_dir) -> List[Path]:
    """``speed.json`` (env + rows) and ``speed.csv`` (rows with the env columns) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "speed.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    fields: List[str] = []
    for r in result["rows"]:
        fields += [k for k in r if k not in fields]
    fields += ["copy_gbps"] + list(CSV_ENV_FIELDS)
    csv_path = out / "speed.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({**r, "copy_gbps": result["copy_gbps"],
                             **{k: result["env"].get(k) for k in CSV_ENV_FIELDS}})
    return [csv_path, json_path]


def load_results(path) -> dict:
    """Read a ``speed.json`` written by :func:`write_results` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "speed.json"
    return json.loads(path.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cbbench.bench.speed", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and samples")
    parser.add_argument("--out", default=None, help="directory for speed.csv and speed.json")
    parser.add_argument("--loss", action="append", choices=LOSSES, help="only this loss (repeatable)")
    parser.add_argument("--impl", action="append", choices=IMPLEMENTATIONS, help="only this implementation "
                        "(repeatable; peers you leave out are not compared)")
    parser.add_argument("--shape", action="append", help="NxC instead of the suite's shapes (repeatable)")
    parser.add_argument("--dtype", default="float32", help="dtype for --shape (default float32)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    losses = tuple(args.loss or LOSSES)
    cases = None
    if args.shape:
        from .cases import parse_shape

        cases = [Case(loss, *parse_shape(s), args.dtype, args.device) for loss in losses for s in args.shape]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run_speed(args.device, quick=args.quick, losses=losses, impls=args.impl or IMPLEMENTATIONS,
                       cases=cases, log=log)
    if args.out:
        for path in write_results(result, args.out):
            log(f"wrote {path}")
    print(header_text(result))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
