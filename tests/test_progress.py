"""gcmae.progress: a bar on a terminal, a log line every ~10 % elsewhere (issue 11 item 10: embedding showed
nothing for minutes); extract_features reports its progress when given a name."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from gcmae.encoders.embed import extract_features
from gcmae.progress import Progress


def test_log_lines_every_tenth_off_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="gcmae.progress"), Progress(100, "embedding x", bar=False) as p:
        for _ in range(40):
            p.update(3)  # overshoots the total: still ten lines, the last at 100 %
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("embedding x: 12 % (12/100 images)")
    assert lines[-1].startswith("embedding x: 100 %") and "left" not in lines[-1]


def test_a_bar_only_on_a_terminal(monkeypatch, caplog):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with caplog.at_level(logging.INFO, logger="gcmae.progress"), Progress(10, "x") as p:
        assert p._bar is not None
        p.update(10)
    assert not caplog.records
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with Progress(10, "x") as p:
        assert p._bar is None


class _Images(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return torch.full((3, 32, 32), i / 20), i % 2, i


def test_extract_features_reports_progress_only_when_named(caplog):
    from gcmae.encoders.loading import load_encoder

    model = load_encoder("random", "vit_tiny", 32, 8).model
    with caplog.at_level(logging.INFO, logger="gcmae.progress"):
        extract_features(model, _Images(), batch_size=4)
        assert not caplog.records  # the training monitor stays quiet
        feats, _ = extract_features(model, _Images(), batch_size=4, progress="embedding demo")
    assert feats.shape[0] == 20
    assert [r.getMessage().split(":")[1].split("(")[0].strip() for r in caplog.records] == \
        ["20 %", "40 %", "60 %", "80 %", "100 %"]
