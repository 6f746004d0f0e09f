"""Loss and kNN curves from a run's metrics.csv."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402


def read_metrics(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from a Lightning CSVLogger file (empty cells skipped)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row.get("step") or 0)
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series[key].append((step, float(value)))
    return dict(series)


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Step losses (rec, nce, total) and, if logged, the kNN accuracies, as one PNG."""
    series = read_metrics(metrics_csv)
    losses = [k for k in ("train/loss_step", "train/loss_rec_step", "train/loss_nce_step") if k in series]
    knn = sorted(k for k in series if k.startswith("knn/"))
    ncols = 1 + bool(knn)
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    for key in losses:
        steps, values = zip(*series[key])
        ax.plot(steps, values, label=key.removeprefix("train/").removesuffix("_step"), lw=1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training losses")
    ax.legend()
    if knn:
        ax = axes[0, 1]
        for key in knn:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o", label=key.removeprefix("knn/"))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("accuracy")
        ax.set_title("kNN monitor")
        ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)
