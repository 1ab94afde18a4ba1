"""``cbbench effective-study``: the measured effective number against known truth and downstream (the
protocol and pass bar in docs/results/effective/pass_bar.md). Slow (minutes to an hour on 2 CPU cores):
not part of ``cbbench bench``.

    cbbench effective-study --out DIR [--part truth,downstream] [--quick] [--seeds K]

``truth``: the prototypes-LT variant swept over noise, dimension and a random feature map, and the null
cases (``DIR/truth.json``, ``DIR/truth.md``, ``DIR/known_truth.png``). ``downstream``: measured weights
against no weighting, 1/n, CB with beta tuned on a validation split and the oracle 1/E_true on the
prototypes-LT variant and digits-LT (``DIR/downstream.json``, ``DIR/downstream.md``,
``DIR/downstream.png``). ``cifar`` (not in the default parts): features of a short ResNet-32 run on
CIFAR-10-LT given as an image folder (``--data-dir`` with ``train/<class>/*``): measured E_c and the dataset
beta beside the paper's 0.9999, and a duplicate-injection check (``DIR/cifar.json``, ``DIR/cifar.md``).
``--render`` rewrites the markdown and plots from the JSON already in DIR.
"""
from __future__ import annotations

import json
import os
import sys
import time

PARTS = ("truth", "downstream", "cifar")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write_json(path: str, payload) -> None:
    from ..harness.compare import atomic_write

    atomic_write(path, json.dumps(payload, indent=1))


def _provenance() -> dict:
    import datetime
    import platform

    import torch

    from ..provenance import git_commit

    return {"commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_truth(out: str, quick: bool, seeds) -> str:
    from ..harness import effective_study as st

    start, provenance = time.perf_counter(), _provenance()  # the code that runs, before any later change
    _log(f"== known truth ({'quick' if quick else 'full'} sweep, seeds {list(seeds)})")
    rows = st.run_known_truth(seeds, quick=quick, log=_log)
    _log("== null cases")
    nulls = st.run_null_cases(seeds)
    payload = {"rows": rows, "nulls": nulls, "seconds": time.perf_counter() - start, "quick": quick,
               "provenance": provenance}
    _write_json(os.path.join(out, "truth.json"), payload)
    return render_truth(out)


def render_truth(out: str) -> str:
    """truth.md and known_truth.png from truth.json; the speed item of the pass bar from speed.json when the
    folder has one (the asv measurement of benchmarks/bench_effective.py, recorded by hand: {"seconds": ...,
    "how": ...})."""
    from ..harness import effective_study as st
    from ..harness.compare import atomic_write

    with open(os.path.join(out, "truth.json")) as fh:
        payload = json.load(fh)
    speed_s = speed_how = None
    if os.path.isfile(os.path.join(out, "speed.json")):
        with open(os.path.join(out, "speed.json")) as fh:
            speed = json.load(fh)
        speed_s, speed_how = float(speed["seconds"]), speed.get("how")
    png = st.plot_known_truth(payload["rows"], os.path.join(out, "known_truth.png"))
    prov = payload["provenance"]
    head = ["# Measured effective number against known truth", "",
            f"`cbbench effective-study --part truth`{' --quick' if payload['quick'] else ''}: commit {prov['commit']}, "
            f"{prov['date']}, torch {prov['torch']}, {prov['cpus']} CPUs ({prov['threads']} torch threads), "
            f"{payload['seconds']:.0f} s.", ""]
    lines = st.known_truth_markdown(payload["rows"], payload["nulls"], speed_s, os.path.basename(png))
    if speed_how:
        lines += [f"Speed: {speed_how}", ""]
    text = "\n".join(head + lines)
    atomic_write(os.path.join(out, "truth.md"), text)
    return text


def run_cifar(out: str, data_dir, epochs: int, threads=None) -> str:
    from ..harness.effective_cifar import run_cifar as measure

    if data_dir is None:
        raise ValueError("--part cifar needs --data-dir: a CIFAR-10-LT image folder (train/<class>/*, test/<class>/*)")
    _log(f"== CIFAR-10-LT from {data_dir} ({epochs} epochs)")
    _write_json(os.path.join(out, "cifar.json"), measure(out, data_dir, epochs=epochs, threads=threads, log=_log))
    return render_cifar(out)


def render_cifar(out: str) -> str:
    from ..harness.compare import atomic_write
    from ..harness.effective_cifar import cifar_markdown
    from ..weights import as_counts
    from .weights import DEFAULT_BETAS, plot_measured

    with open(os.path.join(out, "cifar.json")) as fh:
        r = json.load(fh)

    class _Stored:  # what plot_measured reads, from the recorded JSON
        def __init__(self, d):
            import torch

            self.counts = as_counts(d["counts"])
            self.effective_number = torch.tensor(d["effective_number"], dtype=torch.float64)
            self.dataset_beta, self.radius = d["dataset_beta"], d["radius"]

    png = plot_measured(_Stored(r["measured"]), DEFAULT_BETAS, os.path.join(out, "cifar_measured.png"),
                        f"CIFAR-10-LT: measured E_c ({r['epochs']}-epoch ResNet-32 features)")
    text = "\n".join([f"`cbbench effective-study --part cifar --epochs {r['epochs']}`: measured at commit "
                      f"{r['commit']} (model trained at {r.get('train_commit')}), torch {r['torch']}, "
                      f"{r['threads']} threads, {r['seconds']:.0f} s.", ""]
                     + cifar_markdown(r, os.path.basename(png)))
    atomic_write(os.path.join(out, "cifar.md"), text)
    return text


def run(args) -> int:
    from ..harness.compare import check_writable
    from .lists import parse_list

    parts = parse_list(args.part, str, "--part")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"--part: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    check_writable(args.out)
    for part in parts:
        if part == "truth":
            from ..harness.effective_study import VALIDATION_SEEDS

            seeds = VALIDATION_SEEDS if args.seeds is None else tuple(range(1, args.seeds + 1))
            text = render_truth(args.out) if args.render else run_truth(args.out, args.quick, seeds)
        elif part == "cifar":
            text = render_cifar(args.out) if args.render else run_cifar(args.out, args.data_dir, args.epochs,
                                                                          args.threads)
        else:
            from ..harness.effective_downstream import render_downstream, run_downstream

            text = render_downstream(args.out) if args.render else run_downstream(
                args.out, seeds=5 if args.seeds is None else args.seeds, quick=args.quick, log=_log)
        print(text)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("effective-study", help="the measured effective number against known truth and "
                              "downstream (slow; not part of bench)", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="report/effective", help="output folder (default: %(default)s)")
    p.add_argument("--part", default="truth,downstream", help="comma-separated parts: " + ", ".join(PARTS)
                   + " (default: both)")
    p.add_argument("--quick", action="store_true", help="a smaller sweep / fewer epochs (a smoke run, not the "
                   "recorded study)")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default: truth 3 validation seeds 1-3, "
                   "downstream 5)")
    p.add_argument("--render", action="store_true", help="only rewrite markdown and plots from the JSON in --out")
    p.add_argument("--data-dir", default=None, help="cifar: the CIFAR-10-LT image folder (train/<class>/*)")
    p.add_argument("--epochs", type=int, default=10, help="cifar: epochs of the short ResNet-32 run (default 10)")
    p.add_argument("--threads", type=int, default=None, help="cifar: torch CPU threads for the training run "
                   "(default: torch's own; 1 is steadier on a busy machine)")
    p.set_defaults(func=run)
