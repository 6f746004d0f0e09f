"""A job's features in CLAM's and TRIDENT's layouts, read back the way those tools read them."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from gcmae.slide.bags import find_bags, load_bag
from gcmae.slide.export_layouts import export_features

SLIDE_NAMES = ["cmu-1-small-region", "tcga-cr-7395-01a-01-ts1"]


def _job_bags(job, record):
    return {name: load_bag(job / name / f"features_{record['tag']}.h5") for name in SLIDE_NAMES}


def test_clam_layout(extracted_job, tmp_path):
    job, record = extracted_job
    results = export_features(job, tmp_path / "clam", "clam")
    assert [r.slide_id for r in results] == SLIDE_NAMES and not any(r.skipped for r in results)
    for name, bag in _job_bags(job, record).items():
        with h5py.File(tmp_path / "clam" / "h5_files" / f"{name}.h5", "r") as h5:
            np.testing.assert_array_equal(h5["features"][:], bag.features)
            np.testing.assert_array_equal(h5["coords"][:], bag.coords)
            assert h5["coords"].attrs["patch_size"] == bag.attrs["extent"] and h5["coords"].attrs["patch_level"] == 0
            assert h5.attrs["weights_id"] == bag.attrs["weights_id"]
        pt = torch.load(tmp_path / "clam" / "pt_files" / f"{name}.pt", weights_only=True)
        assert torch.equal(pt, torch.from_numpy(bag.features))
    # gcmae's own MIL reads the exported folder back as bags
    assert sorted(find_bags(tmp_path / "clam" / "h5_files")) == SLIDE_NAMES
    again = export_features(job, tmp_path / "clam", "clam")
    assert all(r.skipped for r in again)
    # features extracted anew (here: another tile list) are exported again, not kept stale
    import shutil
    from gcmae.slide.bags import write_attrs
    job2 = tmp_path / "job2"
    shutil.copytree(job, job2)
    with h5py.File(job2 / SLIDE_NAMES[0] / f"features_{record['tag']}.h5", "a") as h5:
        write_attrs(h5, {"coords_sha256": "0" * 64})
    redone = export_features(job2, tmp_path / "clam", "clam")
    assert [r.skipped for r in redone] == [False, True]


def test_trident_layout(extracted_job, tmp_path):
    job, record = extracted_job
    export_features(job, tmp_path / "trident", "trident")
    folders = [p.name for p in (tmp_path / "trident").iterdir()]
    assert folders == ["2x_48px_0px_overlap"]  # 48-px tiles at 6 µm/px: 10 / 6 ~ 2x
    for name, bag in _job_bags(job, record).items():
        path = tmp_path / "trident" / folders[0] / f"features_{record['tag']}" / f"{name}.h5"
        with h5py.File(path, "r") as h5:
            np.testing.assert_array_equal(h5["features"][:], bag.features)
            assert h5["coords"].attrs["patch_size"] == 48
            assert h5["coords"].attrs["patch_size_level0"] == bag.attrs["extent"]
            assert h5["coords"].attrs["target_magnification"] == 2


def test_unknown_layout_is_refused(extracted_job, tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'dsmil'"):
        export_features(extracted_job[0], tmp_path, "dsmil")


def test_export_features_command(extracted_job, tmp_path, capsys):
    from gcmae.cli import main

    job, _ = extracted_job
    assert main(["export-features", str(job), "--out", str(tmp_path / "t"), "--layout", "trident"]) == 0
    assert "2 slide(s) in the trident layout" in capsys.readouterr().out
    assert len(list((tmp_path / "t").rglob("*.h5"))) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse: not one of the choices
        main(["export-features", str(job), "--out", str(tmp_path / "t"), "--layout", "dsmil"])
    assert exit_info.value.code == 2
