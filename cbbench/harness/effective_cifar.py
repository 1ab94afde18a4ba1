"""The measured effective number on real images: CIFAR-10-LT (an image folder, ``train/<class>/*``), from the
features of a short training run (issue 23; a reduced version sized for a 2-core CPU when no GPU is lent).

1. Train ResNet-32 with plain softmax for ``epochs`` (the CIFAR recipe scaled down: warm-up and decays scale
   with the epochs) and keep the model.
2. Take the 64-d penultimate features of every training image under two random crop + flip augmentations
   (the paper counts augmented copies as one sample) and measure E_c, the fitted N_c / beta_c and the
   dataset beta, to set beside the paper's tuned 0.9999.
3. Duplicate injection, known truth on real images: rebuild every class from fewer source images, class c
   from ``k_c = ceil(n_c / r_c)`` of its images, each repeated as augmented copies (crop + flip) up to the
   class's count ``n_c``, ``r_c`` cycling over :data:`REPLICATIONS` (independent of the count). The
   distinct sources per class are known; the measurement should find ``E_c ~ k_c``.

Nothing here looks at the test split except the trained model's test error, reported for scale.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional

import numpy as np
import torch

from ..effective import effective_number_from_features
from .datasets import load_dataset
from .effective_study import log_errors
from .inputs import _Normaliser, random_crop_flip
from .measured import _Penultimate
from .train import TrainConfig, train_run

__all__ = ["REPLICATIONS", "run_cifar", "cifar_markdown"]

REPLICATIONS = (1, 2, 5, 10, 25)
SENSITIVITY_QUANTILES = (0.5, 0.9, 0.99)


def _features(model, data, images: torch.Tensor, generator: torch.Generator, batch: int = 500) -> torch.Tensor:
    """Penultimate features of ``images`` (uint8, N x 3 x 32 x 32) after a random crop + flip each."""
    prepare = _Normaliser(data, torch.device("cpu"))
    hook = _Penultimate(model)
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch):
                hook.captured.clear()
                model(prepare(random_crop_flip(images[s:s + batch], generator)))
                out.append(hook.captured[-1])
    finally:
        hook.close()
    return torch.cat(out)


def _injected(y: np.ndarray, seed: int):
    """Per training example of the rebuilt set: the index of its source image, and the sources per class."""
    rng = np.random.RandomState(seed)
    source, truth = [], []
    for c in range(int(y.max()) + 1):
        idx = np.nonzero(y == c)[0]
        r = REPLICATIONS[c % len(REPLICATIONS)]
        k = max(1, math.ceil(len(idx) / r))
        picked = rng.choice(idx, size=k, replace=False)
        source.append(np.resize(picked, len(idx)))  # each source r times (the last ones fewer)
        truth.append(k)
    return np.concatenate(source), truth


def run_cifar(out: str, data_dir: str, epochs: int = 10, seed: int = 0, threads: Optional[int] = None,
              log: Optional[Callable[[str], None]] = None) -> dict:
    log = log or (lambda text: None)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    data = load_dataset("folder", data_dir=data_dir)
    counts = data.train_counts
    checkpoint = os.path.join(out, f"resnet32-softmax-{epochs}ep-seed{seed}.pt")
    config = TrainConfig("folder", "softmax", data_dir=data_dir, epochs=epochs, seed=seed, device="cpu",
                         threads=threads)
    model = train = None
    if os.path.isfile(checkpoint):
        saved = torch.load(checkpoint, weights_only=False)
        from .models import build_model

        model = build_model("resnet32", 0, data.num_classes)
        model.load_state_dict(saved["state_dict"])
        train = saved["result"]
        log(f"  loaded {checkpoint}")
    else:
        log(f"  training ResNet-32 (softmax) for {epochs} epochs on {len(data.y_train)} images")
        train, model = train_run(config, data, progress=True, return_model=True)
        model = model.cpu()
        torch.save({"state_dict": model.state_dict(), "result": train}, checkpoint)
    images = torch.as_tensor(data.x_train)
    y = np.asarray(data.y_train)
    gen = torch.Generator().manual_seed(seed + 17)
    t0 = time.perf_counter()
    view_a, view_b = _features(model, data, images, gen), _features(model, data, images, gen)
    feature_s = time.perf_counter() - t0
    measured = effective_number_from_features(view_a, y, data.num_classes, features_aug=view_b)
    no_views = effective_number_from_features(view_a, y, data.num_classes)
    log(f"  measured E {measured.effective_number.tolist()}, dataset beta {measured.dataset_beta}")

    source, truth = _injected(y, seed)
    copies_a = _features(model, data, images[source], gen)
    copies_b = _features(model, data, images[source], gen)
    injected = effective_number_from_features(copies_a, y, data.num_classes, features_aug=copies_b)
    err = log_errors(injected.effective_number.numpy(), truth)
    from scipy.stats import spearmanr

    from ..provenance import git_commit

    # a diagnostic, not a choice: how the injected classes' E moves with the quantile of the view distances
    sensitivity = []
    for q in SENSITIVITY_QUANTILES:
        e = effective_number_from_features(copies_a, y, data.num_classes, features_aug=copies_b, quantile=q)
        sensitivity.append({"quantile": q, "radius": e.radius, "effective_number": e.effective_number.tolist(),
                            "mal": float(np.median(np.abs(log_errors(e.effective_number.numpy(), truth))))})

    result = {
        "epochs": epochs, "seed": seed, "counts": counts.tolist(), "classes": data.meta.get("class_names"),
        "test_top1_error": train.get("top1_error"),
        "test_balanced_error": None if train.get("balanced_accuracy") is None else 100.0 - train["balanced_accuracy"],
        "train_time_s": train.get("train_time_s"),
        "feature_seconds": feature_s, "measured": measured.to_dict(), "no_views": no_views.to_dict(),
        "injected": {"replications": [REPLICATIONS[c % len(REPLICATIONS)] for c in range(data.num_classes)],
                     "distinct_sources": truth, "measured": injected.to_dict(),
                     "mal": float(np.median(np.abs(err))), "bias": float(np.median(err)),
                     "rho": float(spearmanr(injected.effective_number.numpy(), truth).correlation),
                     "sensitivity": sensitivity},
        "seconds": time.perf_counter() - start, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_commit": train.get("config", {}).get("commit"), "commit": git_commit()}
    return result


def cifar_markdown(r: dict, png: Optional[str] = None) -> list:
    m, inj = r["measured"], r["injected"]
    lines = [f"### CIFAR-10-LT (IF 100, JPEG copy), features of a {r['epochs']}-epoch ResNet-32 (reduced: the "
             "recipe is 200 epochs)", "",
             f"Short run: softmax, {r['epochs']} epochs on the 2-core CPU ({r['train_time_s']:.0f} s), test top-1 "
             f"error {r['test_top1_error']:.2f} %, balanced error {r['test_balanced_error']:.2f} % (for scale only: "
             "far from converged). Features: 64-d penultimate, two crop + flip views of every training image.", "",
             "| class | n | measured E (views) | fitted N | beta_c | measured E (no views) |",
             "|---|---|---|---|---|---|"]
    names = r.get("classes") or [str(c) for c in range(len(r["counts"]))]
    for c, n in enumerate(r["counts"]):
        proto, beta = m["prototypes"][c], m["beta"][c]
        proto = proto if isinstance(proto, str) or proto is None else f"{proto:.4g}"
        beta = "–" if beta is None else f"{beta:.6g}"
        lines.append(f"| {names[c]} | {n} | {m['effective_number'][c]} | {proto} | {beta} | "
                     f"{r['no_views']['effective_number'][c]} |")
    lines += ["", f"Radius {m['radius']:.3g} ({m['radius_source']}). Fitted dataset beta: **{m['dataset_beta']:.6g}** "
              f"(the paper tunes 0.9999 on CIFAR-10-LT; without views {r['no_views']['dataset_beta']:.6g}).", "",
              "Duplicate injection (class c rebuilt from k_c distinct source images, each repeated r_c times as "
              "augmented copies; the measurement should give E_c ~ k_c):", "",
              "| class | n | r_c | distinct sources k_c | measured E |", "|---|---|---|---|---|"]
    for c, n in enumerate(r["counts"]):
        lines.append(f"| {names[c]} | {n} | {inj['replications'][c]} | {inj['distinct_sources'][c]} | "
                     f"{inj['measured']['effective_number'][c]} |")
    lines += ["", f"MAL {inj['mal']:.3f}, bias {inj['bias']:+.3f}, Spearman rho {inj['rho']:.3f}.", ""]
    if inj.get("sensitivity"):
        lines += ["Diagnostic, not a choice (the default stays 0.99): the injected classes' measured E at other "
                  "quantiles of the view distances:", "", "| quantile | radius | measured E | MAL |",
                  "|---|---|---|---|"]
        lines += [f"| {s['quantile']:g} | {s['radius']:.3g} | {[int(v) for v in s['effective_number']]} | "
                  f"{s['mal']:.3f} |" for s in inj["sensitivity"]]
        lines.append("")
    if png:
        lines += [f"![measured E on CIFAR-10-LT]({png})", ""]
    return lines
