"""split_folder: two disjoint parts that together hold every image, stratified, reproducible, refusing another
split in the same folder."""
from __future__ import annotations

import random

import pytest

from gcmae.experiments.split_folder import main, split_folder


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_parts_are_disjoint_stratified_and_cover_every_image(samples, tmp_path):
    root = samples / "pcam" / "valid"
    counts = split_folder(root, tmp_path / "s", fraction=0.3, seed=5)
    for cls in ("0_negative", "1_metastatic"):
        everything = _names(root / cls)
        a, b = _names(tmp_path / "s" / "A" / cls), _names(tmp_path / "s" / "B" / cls)
        assert not set(a) & set(b) and sorted(a + b) == everything
        assert len(a) == int(0.3 * len(everything)) == counts["A"][cls]
        link = tmp_path / "s" / "A" / cls / a[0]
        assert link.is_symlink() and link.read_bytes() == (root / cls / a[0]).read_bytes()
    # the documented rule, by hand: one Random(seed), classes in sorted order, sorted files shuffled, first cut to A
    rng = random.Random(5)
    for cls in ("0_negative", "1_metastatic"):
        files = _names(root / cls)
        rng.shuffle(files)
        assert sorted(files[:int(0.3 * len(files))]) == _names(tmp_path / "s" / "A" / cls)


def test_a_rerun_keeps_the_split_and_another_seed_is_refused(samples, tmp_path, capsys):
    root = samples / "pcam" / "valid"
    main([str(root), "--out", str(tmp_path / "s"), "--seed", "0"])
    before = _names(tmp_path / "s" / "B" / "0_negative")
    main([str(root), "--out", str(tmp_path / "s"), "--seed", "0"])
    assert _names(tmp_path / "s" / "B" / "0_negative") == before
    assert "250 0_negative, 250 1_metastatic" in capsys.readouterr().out
    split_folder(root, tmp_path / "other", seed=1)
    assert _names(tmp_path / "other" / "B" / "0_negative") != before
    with pytest.raises(SystemExit, match="holds another split"):
        main([str(root), "--out", str(tmp_path / "s"), "--seed", "1"])


def test_bad_folders_stop_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="image folder not found"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
    (tmp_path / "flat").mkdir()
    with pytest.raises(SystemExit, match="no class folders"):
        main([str(tmp_path / "flat"), "--out", str(tmp_path / "s")])
    with pytest.raises(ValueError, match="fraction"):
        split_folder(tmp_path / "flat", tmp_path / "s", fraction=1.0)
