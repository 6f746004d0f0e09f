"""The simulated second lab: rendering checked against scikit-image, and the experiment's record on real tiles."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import combine_stains, rgb_from_hed

from gcmae.data.in_memory import TensorImageDataset
from gcmae.data.batch_augment import _RGB_FROM_HED
from gcmae.experiments.pcam_probe import COLOUR
from gcmae.experiments.stain_shift import render, run, simulated_lab, table
from gcmae.stain.normalizer import make_normalizer


@pytest.fixture()
def tiles(small_pcam, tmp_path) -> TensorImageDataset:
    return TensorImageDataset(small_pcam, 96, tmp_path / "cache", validate="none")


def test_lab_keeps_vector_lengths_and_draws_amounts_in_range():
    vectors, amounts = simulated_lab(3, 0.3)
    assert torch.allclose(vectors.norm(dim=1), _RGB_FROM_HED.float().norm(dim=1), atol=1e-6)
    assert (vectors > 0).all() and not torch.allclose(vectors, _RGB_FROM_HED.float())
    assert torch.equal(vectors[2], _RGB_FROM_HED.float()[2])  # DAB untouched
    assert ((amounts[:2] >= 0.7) & (amounts[:2] <= 1.3)).all() and amounts[2] == 1
    assert torch.equal(simulated_lab(3, 0.3)[0], vectors) and not torch.equal(simulated_lab(4, 0.3)[0], vectors)


def test_render_matches_beer_lambert_and_scikit_image(tiles):
    # amounts by Beer-Lambert with scikit-image's H, E, DAB vectors (unclamped: skimage's separate_stains sets
    # negative amounts to 0, which would not invert), then scikit-image's combine_stains with the lab's vectors
    images = tiles.images[:4]
    vectors, amounts = simulated_lab(1, 0.3)
    got = render(images, (vectors, amounts)).permute(0, 2, 3, 1).numpy().astype(int)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        od = np.log(np.maximum(img / 255.0, 1e-6)) / np.log(1e-6)
        stains = od @ np.linalg.inv(rgb_from_hed) * amounts.numpy()
        want = combine_stains(stains, vectors.double().numpy()) * 255
        assert np.abs(got[i] - want).max() <= 1.0


def test_no_shift_renders_the_tiles_unchanged(tiles):
    assert torch.equal(render(tiles.images[:6], simulated_lab(0, 0.0)), tiles.images[:6])


def test_run_records_every_condition(tiles):
    normalizer = make_normalizer("macenko")
    result = run(COLOUR, tiles, tiles, [0, 1], 24, 0.3, normalizer)
    assert set(result["as_scanned"]) == {"none/hist", "macenko/hist"}
    assert [lab["seed"] for lab in result["labs"]] == [0, 1]
    for lab in result["labs"]:
        assert lab["shift"]["h_angle_deg"] > 1 and lab["shift"]["lab_mean_delta_e"] > 1
        assert all(0 <= lab[k] <= 1 for k in result["as_scanned"])
    assert result["stain"] == normalizer.id and result["num_train"] == 24
    rows = table([result]).splitlines()
    assert len(rows) == 4 and rows[2].startswith(f"| {COLOUR} | hist | none |") and " ± " in rows[2]


def test_figure_is_written(tiles, tmp_path):
    from gcmae.experiments.stain_shift import figure
    path = figure(tiles.images, [0, 1], 0.3, make_normalizer("macenko"), tmp_path / "fig.png", count=3)
    assert path.stat().st_size > 10_000
