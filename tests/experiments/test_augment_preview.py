"""augment_preview: level 0 is the tiles unchanged, stronger stain jitter saturates more, the figure is a grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.data.in_memory import TensorImageDataset
from gcmae.experiments.augment_preview import augment_rows, main


def test_rows_start_with_the_tiles_and_saturate_more_with_strength(samples, tmp_path):
    images = TensorImageDataset(samples / "pcam" / "valid", 96, tmp_path / "cache", validate="none").images[:8]
    rows, stats = augment_rows(images, "stain_jitter", [0.0, 0.03, 0.3])
    assert rows.shape == (3, 8, 3, 96, 96)
    assert torch.allclose(rows[0], images.float() / 255, atol=1e-6)
    by_hand = images.float().div(255).mean((0, 2, 3))
    assert stats[0]["mean_rgb"] == pytest.approx(by_hand.tolist(), abs=1e-3)
    assert stats[0]["saturated"] < stats[1]["saturated"] < stats[2]["saturated"]
    with pytest.raises(ValueError, match="option must be one of"):
        augment_rows(images, "blur", [1.0])


def test_main_writes_a_row_per_level(samples, tmp_path, capsys):
    figure = tmp_path / "levels.png"
    main(["--folder", str(samples / "pcam" / "valid"), "--option", "grayscale", "--levels", "0", "1",
          "--n", "3", "--figure", str(figure)])
    img = Image.open(figure)
    assert img.size == (3 * 96, 2 * 96)
    grey = torch.from_numpy(np.array(img)[-1, -96:].astype(np.int64))  # a pixel row of the last tile, grayscale 1
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    assert "grayscale=1" in capsys.readouterr().out
