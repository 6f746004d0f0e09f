"""Loss and kNN curves from a run's metrics.csv."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402


def keep_previous_metrics(log_dir: Path) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv; keep it as metrics.partN.csv for the curves."""
    current = log_dir / "metrics.csv"
    if current.exists():
        part = 0
        while (log_dir / f"metrics.part{part}.csv").exists():
            part += 1
        current.rename(log_dir / f"metrics.part{part}.csv")


def metrics_files(log_dir: Path) -> list[Path]:
    """A run's CSV logs in order: the parts kept across resumes, then the current file."""
    parts = sorted(log_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part")))
    current = log_dir / "metrics.csv"
    return parts + ([current] if current.exists() else [])


def read_metrics(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from a CSVLogger file, or from all files of a log folder (a later file
    wins for a step logged twice, e.g. re-run after a resume). Empty cells are skipped."""
    path = Path(path)
    by_step: dict[str, dict[float, float]] = defaultdict(dict)
    for file in metrics_files(path) if path.is_dir() else [path]:
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                step = float(row.get("step") or 0)
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        by_step[key][step] = float(value)
    return {key: sorted(values.items()) for key, values in by_step.items()}


def plot_curves(metrics: str | Path, out_png: str | Path) -> Path:
    """Step losses (rec, nce, total) and, if logged, the kNN accuracies, as one PNG (`metrics`: file or log dir)."""
    series = read_metrics(metrics)
    losses = [k for k in ("train/loss_step", "train/loss_rec_step", "train/loss_nce_step") if k in series]
    suffix = "_step"
    if not losses:  # a run shorter than log_every_n_steps logs no step losses: plot the epoch means instead
        losses = [k for k in ("train/loss_epoch", "train/loss_rec_epoch", "train/loss_nce_epoch") if k in series]
        suffix = "_epoch"
    knn = sorted(k for k in series if k.startswith("knn/"))
    ncols = 1 + bool(knn)
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    for key in losses:
        steps, values = zip(*series[key])
        few = len(steps) < 20  # a handful of points: markers, or a single point would not show at all
        ax.plot(steps, values, label=key.removeprefix("train/").removesuffix(suffix) + (" (epoch mean)" if
                suffix == "_epoch" else ""), lw=1, marker="o" if few else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training losses")
    if losses:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no losses logged yet", ha="center", va="center", transform=ax.transAxes)
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
