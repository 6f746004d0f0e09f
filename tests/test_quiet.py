"""Lightning's promotional tips and its LeafSpec deprecation warning are kept out of gcmae's output."""
import logging
import warnings

import lightning.pytorch as L

from gcmae import quiet
from gcmae.quiet import quiet_third_party


def test_lightning_tips_and_pytree_deprecation_are_silenced(tmp_path, caplog):
    """Issue 11 item 10: every run printed '💡 Tip: ... litlogger' and a LeafSpec FutureWarning."""
    from lightning.pytorch.utilities._pytree import _tree_flatten

    caplog.set_level(logging.INFO)
    for name in quiet._RANK_ZERO_LOGGERS:  # as in a fresh process (an earlier `gcmae` main() installed it)
        logging.getLogger(name).removeFilter(quiet._FILTER)
    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        _tree_flatten(1)
    assert any("LeafSpec" in str(w.message) for w in before)  # the control: the warning exists
    L.Trainer(default_root_dir=tmp_path, logger=L.loggers.CSVLogger(tmp_path), enable_progress_bar=False)
    assert "Tip:" in caplog.text  # the control: Lightning prints it
    caplog.clear()
    quiet_third_party()
    quiet_third_party()  # idempotent
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        quiet_third_party()  # the filter is added after simplefilter, so it takes precedence
        _tree_flatten(1)
    assert not any("LeafSpec" in str(w.message) for w in after)
    L.Trainer(default_root_dir=tmp_path, logger=L.loggers.CSVLogger(tmp_path), enable_progress_bar=False)
    assert "Tip:" not in caplog.text and "GPU available" in caplog.text  # other Lightning info still shows
