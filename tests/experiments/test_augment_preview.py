"""augment_preview: level 0 is the tiles unchanged, every row is BatchAugment with the same draws, saturation is
counted by bytes, the figure is the rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.data.batch_augment import BatchAugment
from gcmae.data.in_memory import TensorImageDataset
from gcmae.experiments.augment_preview import augment_rows, main, saturated_fraction


@pytest.fixture
def tiles(samples, tmp_path) -> torch.Tensor:
    return TensorImageDataset(samples / "pcam" / "valid", 96, tmp_path / "cache", validate="none").images[:8]


def test_rows_start_with_the_tiles_and_saturate_more_with_strength(tiles):
    rows, stats = augment_rows(tiles, "stain_jitter", [0.0, 0.03, 0.3])
    assert rows.shape == (3, 8, 3, 96, 96)
    assert torch.allclose(rows[0], tiles.float() / 255, atol=1e-6)
    by_hand = tiles.float().div(255).mean((0, 2, 3))
    assert stats[0]["mean_rgb"] == pytest.approx(by_hand.tolist(), abs=1e-3)
    as_bytes = tiles.numpy()
    assert stats[0]["saturated"] == pytest.approx(np.isin(as_bytes, [0, 1, 254, 255]).mean(), abs=1e-3)
    assert stats[0]["saturated"] < stats[1]["saturated"] < stats[2]["saturated"]
    with pytest.raises(ValueError, match="option must be one of"):
        augment_rows(tiles, "blur", [1.0])


def test_saturated_fraction_counts_bytes_0_1_254_255():
    values = torch.tensor([0, 1, 2, 128, 253, 254, 255, 255, 7, 9], dtype=torch.float32) / 255
    assert saturated_fraction(values) == pytest.approx(5 / 10)


def test_every_row_is_batch_augment_with_the_same_draws(tiles):
    rows, _ = augment_rows(tiles, "stain_jitter", [0.1, 0.1, 0.05], seed=3)
    assert torch.equal(rows[0], rows[1])
    aug = BatchAugment(96, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, mean=(0.0, 0.0, 0.0),
                       std=(1.0, 1.0, 1.0), stain_jitter=0.05)
    assert torch.allclose(rows[2], aug(tiles, torch.Generator().manual_seed(3)).clamp(0, 1))
    again, _ = augment_rows(tiles, "stain_jitter", [0.1], seed=3)
    other, _ = augment_rows(tiles, "stain_jitter", [0.1], seed=4)
    assert torch.equal(again[0], rows[0]) and not torch.equal(other[0], rows[0])


def test_main_writes_the_rows_as_a_grid(samples, tmp_path, capsys):
    figure = tmp_path / "levels.png"
    main(["--folder", str(samples / "pcam" / "valid"), "--option", "grayscale", "--levels", "0", "1",
          "--n", "3", "--figure", str(figure)])
    pixels = np.array(Image.open(figure))
    assert pixels.shape == (2 * 96, 3 * 96, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["levels.png"]  # no temp file left behind
    data = TensorImageDataset(samples / "pcam" / "valid", 96, None, validate="none")
    first = data.images[0].permute(1, 2, 0).numpy()  # the top-left tile is the folder's first, as scanned
    assert np.abs(pixels[:96, :96].astype(int) - first.astype(int)).max() <= 1
    grey = pixels[-1, -96:].astype(np.int64)  # a pixel row of the last tile, grayscale 1
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    assert "grayscale=1" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [(["--n", "0"], "--n must be at least 1"),
                                           (["--levels", "-0.1"], "stain_jitter"),
                                           (["--folder", "no/such/folder"], "no/such/folder")])
def test_bad_arguments_stop_with_a_message(args, message, samples, tmp_path, capsys):
    base = ["--folder", str(samples / "pcam" / "valid"), "--figure", str(tmp_path / "f.png")]
    with pytest.raises(SystemExit) as stop:
        main(base + args)
    assert message in str(stop.value.code) + capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()
