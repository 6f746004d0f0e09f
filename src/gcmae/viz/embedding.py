"""2-D maps of encoder features (t-SNE, UMAP), one colour per class, with a legend of class names."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from gcmae.io.atomic import atomic_path  # noqa: E402

PCA_DIMS = 50
METHODS = ("tsne", "umap")


def subsample(num_items: int, max_items: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most `max_items` items (all of them if fewer)."""
    if num_items <= max_items:
        return np.arange(num_items)
    return np.sort(np.random.default_rng(seed).choice(num_items, size=max_items, replace=False))


def _reduced(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """float32 features, PCA-reduced to 50 dimensions when wider (as is usual before t-SNE / UMAP)."""
    x = np.asarray(features, dtype=np.float32)
    if x.shape[0] < 4:
        raise ValueError(f"{method} needs at least 4 images, got {x.shape[0]}")
    if x.shape[1] > PCA_DIMS and x.shape[0] > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    return x


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, 2) t-SNE coordinates (PCA to 50 dimensions first when wider; perplexity capped for small N)."""
    x = _reduced(features, "t-SNE", seed)
    perplexity = min(perplexity, (x.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # one OpenMP thread: next to torch's own OpenMP pool, scikit-learn's Barnes-Hut loop was 3-10x slower with more
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x)


def umap_2d(features: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, 2) UMAP coordinates (cosine metric; PCA to 50 dimensions first when wider; seeded, so single-threaded)."""
    import umap  # imported here: numba compiles it on first import (~15 s)

    x = _reduced(features, "UMAP", seed)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, x.shape[0] - 1), metric="cosine",
                        random_state=seed, n_jobs=1)
    return reducer.fit_transform(x)


def map_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates from `method` ("tsne" or "umap")."""
    if method not in METHODS:
        raise ValueError(f"unknown 2-D map {method!r}; choose one of {', '.join(METHODS)}")
    return tsne_2d(features, seed) if method == "tsne" else umap_2d(features, seed)


def embedding_figure(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str = "") -> Figure:
    """Scatter plot of `points` coloured by `labels` (indices into `classes`; -1 or no classes: unlabelled)."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    size = float(np.clip(3000 / max(len(points), 1), 4, 40))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    if not classes:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.7, color="tab:gray",
                   label=f"unlabelled (n={len(points)})")
    for i, name in enumerate(classes):
        sel = labels == i
        ax.scatter(points[sel, 0], points[sel, 1], s=size, alpha=0.7, color=cmap(i % cmap.N),
                   label=f"{name} (n={int(sel.sum())})", edgecolors="none")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=max(1.0, 40 / size) ** 0.5,
              fontsize=9, frameon=False, title="class")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "encoder features", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out_png: str | Path, dpi: int = 120) -> Path:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def plot_embedding(features: np.ndarray, labels: np.ndarray, classes: list[str], out_png: str | Path,
                   title: str = "", seed: int = 0, method: str = "tsne") -> Path:
    """A t-SNE or UMAP map of `features` saved as a PNG coloured by class."""
    points = map_2d(features, method, seed)
    return save_figure(embedding_figure(points, np.asarray(labels), classes, title), out_png)
