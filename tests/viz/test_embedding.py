"""t-SNE / UMAP maps: separated classes stay separated, the legend names every class."""
import numpy as np
from PIL import Image

import pytest

from gcmae.viz.embedding import embedding_figure, map_2d, plot_embedding, subsample, tsne_2d

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


def clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 64)) * 10
    labels = np.repeat(np.arange(3), 15)
    return centres[labels] + rng.normal(size=(45, 64)), labels


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_separated_classes_stay_separated(method):
    x, y = clusters()
    points = map_2d(x, method)
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (y[dist.argmin(1)] == y).all()  # every point's nearest 2-D neighbour is of its class


def test_legend_names_the_classes(tmp_path):
    x, y = clusters(1)
    fig = embedding_figure(tsne_2d(x), y, ["ADI", "LYM", "TUM"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["ADI (n=15)", "LYM (n=15)", "TUM (n=15)"]
    out = plot_embedding(x, y, ["ADI", "LYM", "TUM"], tmp_path / "t.png", "title", method="tsne")
    with Image.open(out) as img:
        assert img.format == "PNG" and min(img.size) > 400


def test_subsample_is_seeded_and_bounded():
    assert subsample(10, 20).tolist() == list(range(10))
    a, b = subsample(1000, 50, seed=3), subsample(1000, 50, seed=3)
    assert len(a) == 50 and len(set(a)) == 50 and (a == b).all() and (np.diff(a) > 0).all()


def test_unlabelled_points_get_one_legend_entry():
    x, _ = clusters(2)
    fig = embedding_figure(tsne_2d(x), np.full(len(x), -1), [])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["unlabelled (n=45)"]


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="umapp"):
        map_2d(clusters()[0], "umapp")
