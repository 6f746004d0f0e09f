"""Third-party noise kept out of gcmae's own output: Lightning's promotional tips and a deprecation warning that
Lightning (not gcmae) triggers inside torch. Only these exact messages are dropped; everything else passes."""
from __future__ import annotations

import logging
import warnings

_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning_utilities.core.rank_zero")
# lightning/pytorch/utilities/_pytree.py builds torch's deprecated LeafSpec; nothing a gcmae user can act on
_PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip:")


_FILTER = _DropTips()


def quiet_third_party() -> None:
    """Drop Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines and torch's LeafSpec deprecation
    warning raised from Lightning's code (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=_PYTREE_DEPRECATION, category=FutureWarning)
