"""Speed comparison: every loss x shape x dtype x implementation on one device, timed by the shared core.

    python -m cbbench.bench.speed --device {cpu,cuda} [--quick] [--out DIR] [--threads N]

Prints a table (median ms of forward+backward and of forward only, the ratio to the bandwidth floor,
the operators one call issues forward/backward, and the speed-up against the peers measured in the same
run) and writes ``speed.csv`` and ``speed.json`` (each row with the run's environment record, and p20,
p80 and the minimum beside every median; the JSON also lists the operators by name) into DIR. Every
implementation is checked against the reference on the timed inputs before it is timed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import torch

from . import bandwidth
from .cases import DTYPE_SHORT, DTYPES, LOSS_TITLES, LOSSES, Case, Inputs, make_inputs, parse_shape, suite
from .providers import IMPLEMENTATIONS, MODES, PEERS, PROVIDERS, check, reference_values
from ..provenance import environment, load_average
from .opcount import count_ops
from .timing import FULL, QUICK, TimingPolicy, measure


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _copy_inputs(inputs: Inputs) -> Inputs:
    """Fresh tensors with the same values (for a provider that overwrites its inputs)."""
    return Inputs(inputs.logits.detach().clone().requires_grad_(True), inputs.target.clone(),
                  inputs.weight.clone())


def run_case(case: Case, impls: Sequence[str], policy: TimingPolicy, copy_gbps: float,
             log: Callable[[str], None] = lambda s: None, modes: Sequence[str] = MODES,
             skip: Callable[[Case, str], Optional[str]] = lambda case, impl: None) -> List[dict]:
    """Rows for one case: each implementation checked against the reference, its operators counted
    (forward and backward, :mod:`.opcount`), then timed in each of ``modes`` (``fwd_bwd``, ``fwd``);
    an implementation for which ``skip(case, impl)`` gives a reason is a skipped row with that reason.

    The reference values are computed once per quantity from the pristine inputs; a provider that writes
    into its inputs (``Provider.mutates_input``, e.g. Liger) is checked and timed on a copy of its own, so
    every other provider, before or after it, sees the pristine inputs."""
    rows = []
    inputs = None
    expected = {}
    for impl in impls:
        provider = PROVIDERS[impl]
        row = {"loss": case.loss, "shape": case.shape, "n": case.n, "c": case.c, "dtype": case.dtype,
               "device": case.device, "impl": impl, "status": "ok", "note": ""}
        for mode in MODES:
            row[f"floor_bytes_{mode}"] = bandwidth.floor_bytes(case, mode)
        reason = skip(case, impl) or provider.unavailable(case)
        if reason is not None:
            row.update(status="skipped", note=reason)
            rows.append(row)
            continue
        if inputs is None:
            inputs = make_inputs(case)
        quantity = provider.expected_quantity(case)
        if quantity not in expected:
            expected[quantity] = reference_values(case, inputs, quantity)
        own = _copy_inputs(inputs) if provider.mutates_input else inputs
        try:
            fn = provider.build(case, own)
            try:
                row["max_error_vs_tolerance"] = check(fn, case, own, expected[quantity])
            except AssertionError as exc:
                row.update(status="mismatch", note=str(exc))
            if not provider.compiled and not provider.graphed:
                ops = count_ops(lambda: fn(own.logits, own.target, own.weight), own.logits)
                row["ops_fwd"], row["ops_bwd"] = ops.n_forward, ops.n_backward
                row["ops"] = {"fwd": ops.forward, "bwd": ops.backward}
            for mode in modes:
                m = measure(provider.timed_step(fn, own, mode, case.device), case.device, policy)
                row.update({f"{mode}_{key}": value for key, value in m.summary().items() if key != "clock"})
                row[f"{mode}_ms"] = row.pop(f"{mode}_median_ms")
                row["clock"] = m.clock
                row[f"gbps_{mode}"] = bandwidth.effective_gbps(row[f"floor_bytes_{mode}"], m.median_ms)
                row[f"frac_copy_{mode}"] = row[f"gbps_{mode}"] / copy_gbps
                row[f"x_floor_{mode}"] = m.median_ms / bandwidth.floor_ms(row[f"floor_bytes_{mode}"], copy_gbps)
        except Exception as exc:  # a peer that cannot run this case (e.g. eager bf16 with fp32 weight)
            row.update(status="error", note=_short_error(exc))
            if not isinstance(exc, (RuntimeError, TypeError, ValueError)):
                traceback.print_exc()
        del own
        log(_progress_line(case, row))
        rows.append(row)
    del inputs, expected
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def _progress_line(case: Case, row: dict) -> str:
    timing = "  ".join(f"{label} {row[key]:9.3f} ms" for label, key in (("fwd+bwd", "fwd_bwd_ms"), ("fwd", "fwd_ms"))
                       if key in row)
    if "ops_fwd" in row:
        timing += f"  ops {row['ops_fwd']}/{row['ops_bwd']}"
    note = "" if row["status"] == "ok" else f"  [{row['status']}: {row['note']}]"
    return f"  {case.label():32s} {row['impl']:10s} {timing}{note}"


def add_peer_ratios(rows: List[dict]) -> None:
    """``speedup_vs_<peer>`` = peer's fwd+bwd median / this row's, for peers timed on the same case (not
    for graph-replayed rows: the peers run eagerly, so that ratio would not compare like with like)."""
    key = lambda r: (r["loss"], r["shape"], r["dtype"], r["device"])  # noqa: E731
    timed = {(key(r), r["impl"]): r["fwd_bwd_ms"] for r in rows if r.get("fwd_bwd_ms") is not None
             and r["status"] == "ok"}
    for r in rows:
        provider = PROVIDERS.get(r["impl"])
        if provider is not None and provider.graphed:
            continue
        for peer in PEERS:
            other = timed.get((key(r), peer))
            if other is not None and r.get("fwd_bwd_ms"):
                r[f"speedup_vs_{peer}"] = other / r["fwd_bwd_ms"]


def _check_threads(threads: Optional[int]) -> Optional[int]:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    return threads


def run_speed(device: str = "cpu", *, quick: bool = False, losses: Iterable[str] = LOSSES,
              impls: Iterable[str] = IMPLEMENTATIONS, cases: Optional[List[Case]] = None,
              policy: Optional[TimingPolicy] = None, threads: Optional[int] = None,
              log: Callable[[str], None] = lambda s: None, modes: Sequence[str] = MODES,
              on_case: Callable[[Case], None] = lambda case: None,
              skip: Callable[[Case, str], Optional[str]] = lambda case, impl: None) -> dict:
    """Run the speed comparison; returns ``{"env", "copy_gbps", "policy", "modes", "rows"}``. ``cases``
    default to the "quick" or "full" set of the case table; ``modes`` are the timed modes (fwd+bwd, fwd);
    ``on_case`` is called after each case; ``skip(case, impl)`` gives the reason an implementation is left
    out of a case, or ``None``. ``threads`` sets ``torch.set_num_threads`` for the run (restored
    afterwards; default: torch's own setting)."""
    device_type = torch.device(device).type
    impls = [i for i in impls]
    for impl in impls:
        if impl not in PROVIDERS:
            raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    if device_type == "cuda" and not (torch.version.cuda and torch.cuda.is_available()):
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    _check_threads(threads)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be some of {MODES}, got {list(modes)!r}")
    args = (device, device_type, quick, losses, impls, cases, policy, log, tuple(modes), on_case, skip)
    if threads is None:
        return _run_speed(*args)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_speed(*args)
    finally:
        torch.set_num_threads(before)


def _run_speed(device, device_type, quick, losses, impls, cases, policy, log, modes, on_case, skip) -> dict:
    policy = policy or (QUICK if quick else FULL)
    cases = cases if cases is not None else suite(device_type, quick=quick, losses=tuple(losses))
    env = environment(device)
    began = time.perf_counter()
    copy_gbps = bandwidth.copy_bandwidth_gbps(device)
    log(f"{env['device_name']}: device copy bandwidth {copy_gbps:.1f} GB/s")
    rows: List[dict] = []
    for case in cases:
        rows.extend(run_case(case, impls, policy, copy_gbps, log, modes, skip))
        on_case(case)
    add_peer_ratios(rows)
    env["load_average_1min_after"] = load_average()
    env["torch_threads"] = torch.get_num_threads()
    return {"env": env, "copy_gbps": copy_gbps, "wall_s": time.perf_counter() - began,
            "policy": dataclasses.asdict(policy), "modes": list(modes), "rows": rows}


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------
def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def format_table(result: dict, markdown: bool = False) -> str:
    """The speed table: one line per case and implementation that ran; skipped ones listed below."""
    head = ["loss", "shape", "dtype", "impl", "fwd+bwd ms", "p20-p80", "fwd ms", "x floor", "ops f/b",
            "vs eager", "vs compile", "vs b-loss", "note"]
    lines = []
    skipped = {}
    for r in result["rows"]:
        if r["status"] == "skipped":
            skipped.setdefault(r["impl"], r["note"])
            continue
        vs = lambda p: _fmt(r.get(f"speedup_vs_{p}"), ".2f") + ("x" if r.get(f"speedup_vs_{p}") else "")  # noqa
        note = "" if r["status"] == "ok" else f"{r['status'].upper()}: {r['note']}"
        spread = (f"{r['fwd_bwd_p20_ms']:.3f}-{r['fwd_bwd_p80_ms']:.3f}" if r.get("fwd_bwd_p20_ms") is not None
                  else "—")
        ops = f"{r['ops_fwd']}/{r['ops_bwd']}" if r.get("ops_fwd") is not None else "—"
        lines.append([LOSS_TITLES[r["loss"]], r["shape"], DTYPE_SHORT[r["dtype"]], r["impl"],
                      _fmt(r.get("fwd_bwd_ms"), ".3f"), spread, _fmt(r.get("fwd_ms"), ".3f"),
                      _fmt(r.get("x_floor_fwd_bwd"), ".1f"), ops, vs("eager"), vs("compile"), vs("balanced_loss"),
                      note[:70]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
    else:
        widths = [max(len(head[i]), *(len(row[i]) for row in lines)) if lines else len(head[i])
                  for i in range(len(head))]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    ran = {r["impl"] for r in result["rows"] if r["status"] != "skipped"}
    for impl, reason in skipped.items():
        where = "not run at every shape" if impl in ran else "not run"
        out.append(("" if not markdown else "\n") + f"{where}: {impl} ({reason})")
    return "\n".join(out)


def load_caution(result: dict) -> Optional[str]:
    """The warning that CPU timings were taken on a busy machine (1-min load average above half the
    CPUs when the run started), or ``None``; the report and the CLI table header both print it."""
    env = result["env"]
    load = env.get("load_average_1min")
    cpus = env.get("cpu_count") or 1
    if env.get("device") == "cpu" and load is not None and load > 0.5 * cpus:
        return (f"the 1-min load average was {load} on {cpus} CPUs when this run started: other work shared "
                "the CPUs and these timings are not final.")
    return None


def header_text(result: dict) -> str:
    env = result["env"]
    load = env.get("load_average_1min"), env.get("load_average_1min_after")
    caution = load_caution(result)
    return (f"{env['device_name']} | torch {env['torch']} (CUDA {env['torch_cuda']}) | cbbench {env['cbbench']} "
            f"commit {(env.get('commit') or 'unknown')[:12]} | {env['date']}\n"
            f"copy bandwidth {result['copy_gbps']:.1f} GB/s | medians (p20/p80/min in the records) of >= "
            f"{result['policy']['min_repeat']} "
            f"samples ({env['device'].startswith('cuda') and 'CUDA events, L2 flushed' or 'host clock'}) | "
            f"1-min load average before/after: {load[0]}/{load[1]} on {env['cpu_count']} CPUs"
            + (f"\nCAUTION: {caution}" if caution else ""))


CSV_ENV_FIELDS = ("device_name", "torch", "torch_cuda", "cbbench", "commit", "date", "load_average_1min")


def write_results(result: dict, out_dir) -> List[Path]:
    """``speed.json`` (env + rows) and ``speed.csv`` (rows with the env columns) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "speed.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    fields: List[str] = []
    for r in result["rows"]:
        fields += [k for k in r if k not in fields and not isinstance(r[k], dict)]  # op lists: JSON only
    fields += ["copy_gbps"] + list(CSV_ENV_FIELDS)
    csv_path = out / "speed.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({**{k: v for k, v in r.items() if k in fields}, "copy_gbps": result["copy_gbps"],
                             **{k: result["env"].get(k) for k in CSV_ENV_FIELDS}})
    return [csv_path, json_path]


def load_results(path) -> dict:
    """Read a ``speed.json`` written by :func:`write_results` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "speed.json"
    return json.loads(path.read_text())


DTYPE_NAMES = {**{d: d for d in DTYPES}, **{short: d for d, short in DTYPE_SHORT.items()}}


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
    parser.add_argument("--dtype", default="float32",
                        help=f"dtype for --shape: {', '.join(DTYPE_NAMES)} (default float32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's own setting)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    losses = tuple(args.loss or LOSSES)
    if args.dtype not in DTYPE_NAMES:
        parser.error(f"argument --dtype: {args.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    dtype = DTYPE_NAMES[args.dtype]
    if args.threads is not None and args.threads < 1:
        parser.error(f"argument --threads: must be >= 1, got {args.threads}")
    if args.device == "cuda" and not (torch.version.cuda and torch.cuda.is_available()):
        parser.error("argument --device: cuda was chosen but no CUDA device is available to torch")
    cases = None
    if args.shape:
        try:
            shapes = [parse_shape(s) for s in args.shape]
        except ValueError as exc:
            parser.error(f"argument --shape: {exc}")
        cases = [Case(loss, n, c, dtype, args.device) for loss in losses for n, c in shapes]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run_speed(args.device, quick=args.quick, losses=losses, impls=args.impl or IMPLEMENTATIONS,
                       cases=cases, threads=args.threads, log=log)
    if args.out:
        for path in write_results(result, args.out):
            log(f"wrote {path}")
    print(header_text(result))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
