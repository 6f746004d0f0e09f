"""Bar chart of the replica table: one group per eval set/protocol, one bar per method (mean ± std over seeds),
each seed's value as a dot."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gcmae.viz.embedding import save_figure  # noqa: E402


def plot_replica(summary: dict[tuple[str, str, str], tuple[float, float, int]], methods: list[str],
                 columns: list[str], metric: str, out_png: str | Path,
                 per_seed: dict[tuple[str, str, str, int], float] | None = None) -> Path:
    """`summary[(method, eval_set, protocol)] = (mean, std, n)`; `columns` are "eval_set/protocol"."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(methods)) / 3 + 2), 4.2))
    width = 0.8 / max(1, len(methods))
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(columns))
    lows = []
    for i, m in enumerate(methods):
        stats = [summary.get((m, *c.split("/")), (np.nan, 0.0, 0)) for c in columns]
        means = np.array([s[0] for s in stats])
        stds = np.array([s[1] for s in stats])
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width * 0.9, yerr=stds, capsize=3, color=cmap(i % 10), label=m, alpha=0.85)
        lows.append(np.nanmin(means - stds) if np.isfinite(means).any() else 0.0)
        for j, c in enumerate(columns):
            vals = [v for (mm, s, p, _), v in (per_seed or {}).items() if mm == m and f"{s}/{p}" == c and v is not None]
            ax.scatter(np.full(len(vals), pos[j]), vals, s=9, color="black", zorder=3)
    ax.set_xticks(x, columns, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(metric)
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, len(methods)), loc="upper left", frameon=False)
    ax.set_title(f"{metric}: mean ± std over seeds (dots: single seeds)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)
