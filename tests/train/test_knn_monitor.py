"""The kNN monitor logs weighted-kNN and 1-NN accuracy on a labelled folder, and refuses mismatched folders."""
import shutil

import pytest

from gcmae.train.pretrain import run_pretrain
from gcmae.viz.curves import read_metrics
from tests.train.helpers import tiny_config

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`


def test_monitor_logs_knn_accuracy(small_pcam, tmp_path):
    run = run_pretrain(tiny_config(small_pcam, tmp_path / "run", "optim.epochs=1", f"monitor.train_dir={small_pcam}",
                                   f"monitor.val_dir={small_pcam}", "monitor.k=5"))
    series = read_metrics(tmp_path / "run" / "logs")
    for key in ("knn/top1_k5", "knn/top1_1nn"):
        [(_, accuracy)] = series[key]
        assert 0.0 <= accuracy <= 1.0
    # query == reference, so 1-NN finds each image itself: accuracy 1
    assert series["knn/top1_1nn"][0][1] == 1.0
    assert run.trainer.callback_metrics["knn/top1_1nn"] == 1.0


def test_monitor_with_different_classes_is_an_error(small_pcam, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(small_pcam / "0_negative", other / "0_negative")
    shutil.copytree(small_pcam / "1_metastatic", other / "tumour")
    with pytest.raises(ValueError, match="class sets differ"):
        run_pretrain(tiny_config(small_pcam, tmp_path / "run", f"monitor.train_dir={small_pcam}",
                                 f"monitor.val_dir={other}"))
