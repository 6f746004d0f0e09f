"""Loss curves of short runs: something is drawn, and no legend warning."""
import warnings

import numpy as np
from PIL import Image

from gcmae.viz.curves import plot_curves

# what Lightning's CSVLogger writes for a 2-epoch run of 3 steps each with log_every_n_steps=50: epoch rows only
SHORT_RUN = """epoch,step,train/loss_epoch,train/loss_nce_epoch,train/loss_rec_epoch
0,2,1.52,4.1,1.11
1,5,1.31,3.2,0.99
"""


def _blue_pixels(png) -> int:
    """Pixels of matplotlib's first colour (C0, #1f77b4): the first plotted series."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - [31, 119, 180]).sum(axis=2) < 40).sum())


def test_short_run_curves_are_not_empty(tmp_path):
    """Issue 11 item 10: loss_curves.png was an empty frame (only step losses were drawn) with a legend warning."""
    csv = tmp_path / "metrics.csv"
    csv.write_text(SHORT_RUN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        plot_curves(csv, tmp_path / "short.png")
    assert _blue_pixels(tmp_path / "short.png") > 50
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,train/loss_step\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves(empty, tmp_path / "empty.png")  # nothing logged yet: a note, no warning
    assert _blue_pixels(tmp_path / "empty.png") < 5
