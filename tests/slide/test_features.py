"""`gcmae extract` on the two real sample slides with a tiny ViT: values, metadata, resume, failures, shards."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from gcmae.cli import main
from gcmae.encoders.embed import embed
from gcmae.encoders.loading import load_encoder
from gcmae.io.paths import claim
from gcmae.slide.bags import load_bag, read_attrs
from gcmae.slide.coords import read_coords_h5, write_coords_h5
from gcmae.slide.features import FAILURES_FILENAME, encoder_record, extract_job, parse_shard
from gcmae.slide.reader import open_slide
from tests.slide.slide_helpers import MPP, TILE, copy_job

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
SLIDE_NAMES = ["cmu-1-small-region", "tcga-cr-7395-01a-01-ts1"]


def _direct_features(slide_dir: Path, encoder) -> np.ndarray:
    """Independent reference: read_region + Lanczos to the tile size + PIL bicubic to the encoder size, normalise
    by hand, embed one tile at a time."""
    tiles = read_coords_h5(slide_dir / "coords.h5")
    g, mean, std = tiles.grid, np.array(encoder.mean), np.array(encoder.std)
    out = []
    with open_slide(tiles.slide_path) as reader, torch.no_grad():
        for x, y in tiles.coords:
            im = reader.read_region((int(x), int(y)), g.level, (g.read_size, g.read_size))
            im = im.resize((g.tile_size, g.tile_size), Image.Resampling.LANCZOS)
            im = im.resize((encoder.img_size, encoder.img_size), Image.Resampling.BICUBIC)
            a = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
            t = torch.from_numpy(a.transpose(2, 0, 1).copy()).float()[None]
            out.append(embed(encoder.model, t, "cls")[0].numpy())
    return np.stack(out)


def test_dataloader_with_workers_equals_a_direct_read_and_embed_loop(slide_job, tiny_ckpt, tmp_path):
    job = copy_job(slide_job, tmp_path / "job")
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    summary = extract_job(job, encoder, record, batch_size=7, num_workers=2, progress=False)  # 7: ragged batches
    assert sorted(summary.done) == SLIDE_NAMES and not summary.failures
    for name in SLIDE_NAMES:
        bag = load_bag(job / name / f"features_{record['tag']}.h5")
        ref = _direct_features(job / name, encoder)
        assert bag.features.shape == ref.shape and bag.features.dtype == np.float32
        np.testing.assert_allclose(bag.features, ref, rtol=0, atol=1e-4)
        assert np.array_equal(bag.coords, read_coords_h5(job / name / "coords.h5").coords)


def test_feature_file_records_where_it_comes_from(extracted_job, tiny_ckpt):
    job, record = extracted_job
    assert record["tag"].startswith("vit_tiny_p8_32-") and record["tag"].endswith("-cls")
    digest = hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert record["tag"] == f"vit_tiny_p8_32-{digest[:8]}-cls"
    for name in SLIDE_NAMES:
        path = job / name / f"features_{record['tag']}.h5"
        tiles = read_coords_h5(job / name / "coords.h5")
        a = read_attrs(path)
        assert a["complete"] is True and a["checkpoint_sha256"] == digest == a["weights_id"]
        assert a["checkpoint"] == str(tiny_ckpt.resolve()) and a["encoder"] == "vit_tiny" and a["pool"] == "cls"
        assert (a["img_size"], a["patch_size"], a["feature_dim"]) == (32, 8, 192)
        assert (a["level"], a["read_size"], a["step"], a["tile_size"], a["tile_mpp"]) == (
            tiles.grid.level, tiles.grid.read_size, tiles.grid.step, TILE, tiles.grid.mpp)
        assert a["num_tiles"] == len(tiles) > 5 and a["slide_name"] == name and a["created"].startswith("20")
        # issue 11 item 8: the 48-px tiles are resized to the 32-px encoder input, which is recorded
        assert a["resized_from"] == TILE and a["input_mpp"] == pytest.approx(tiles.grid.mpp * TILE / 32)
        with h5py.File(path) as h5:
            assert h5["features"].shape == (len(tiles), 192) and h5["features"].dtype == np.float32
            assert h5["coords"].dtype == np.int64


def test_rerun_skips_finished_slides_and_redoes_partial_or_stale_ones(extracted_job, tmp_path):
    src, record = extracted_job
    job = copy_job(src, tmp_path / "job")
    encoder = load_encoder(record["checkpoint"])
    name = f"features_{record['tag']}.h5"
    cmu, tcga = (job / n / name for n in SLIDE_NAMES)
    good = load_bag(cmu).features
    before = tcga.stat().st_mtime_ns
    with h5py.File(cmu, "r+") as h5:  # a file whose writer died before marking it complete
        h5.attrs["complete"] = False
        h5["features"][:] = 0
    summary = extract_job(job, encoder, record, num_workers=0, progress=False)
    assert summary.done == [SLIDE_NAMES[0]] and summary.skipped == [SLIDE_NAMES[1]]
    assert tcga.stat().st_mtime_ns == before
    np.testing.assert_array_equal(load_bag(cmu).features, good)
    cmu.write_bytes(cmu.read_bytes()[:2000])  # truncated file
    assert extract_job(job, encoder, record, num_workers=0, progress=False).done == [SLIDE_NAMES[0]]
    np.testing.assert_array_equal(load_bag(cmu).features, good)
    tiles = read_coords_h5(job / SLIDE_NAMES[1] / "coords.h5")  # re-tiled: other tiles than the features hold
    write_coords_h5(job / SLIDE_NAMES[1] / "coords.h5", dataclasses.replace(
        tiles, coords=tiles.coords[:5], tissue_fraction=tiles.tissue_fraction[:5], attrs={}))
    assert extract_job(job, encoder, record, num_workers=0, progress=False).done == [SLIDE_NAMES[1]]
    assert load_bag(tcga).features.shape == (5, 192)
    assert not list(job.rglob(".*.tmp")), "temporary files left behind"


def test_a_broken_slide_is_reported_and_the_others_complete(slide_job, tiny_ckpt, tmp_path):
    job = copy_job(slide_job, tmp_path / "job")
    good = read_coords_h5(job / SLIDE_NAMES[0] / "coords.h5")
    broken = tmp_path / "broken.svs"
    broken.write_bytes(good.slide_path.read_bytes()[:300_000])  # a truncated copy of the real slide
    (job / "broken").mkdir()
    write_coords_h5(job / "broken" / "coords.h5", dataclasses.replace(good, slide_path=broken, name="broken",
                                                                        attrs={}))
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    summary = extract_job(job, encoder, record, num_workers=0, progress=False)
    assert summary.done == SLIDE_NAMES and [f[0] for f in summary.failures] == ["broken"]
    with open(job / FAILURES_FILENAME, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == ["broken"] and "broken.svs" in rows[0]["reason"]
    assert not (job / "broken" / f"features_{record['tag']}.h5").exists()
    shutil.copy(good.slide_path, broken)  # repaired: the re-run does it and clears the failure
    summary = extract_job(job, encoder, record, num_workers=0, progress=False)
    assert summary.done == ["broken"] and summary.skipped == SLIDE_NAMES
    with open(job / FAILURES_FILENAME, newline="") as fh:
        assert list(csv.DictReader(fh)) == []


def test_a_slide_without_tiles_gets_an_empty_finished_feature_file(slide_job, tiny_ckpt, tmp_path):
    job = copy_job(slide_job, tmp_path / "job")
    tiles = read_coords_h5(job / SLIDE_NAMES[0] / "coords.h5")
    write_coords_h5(job / SLIDE_NAMES[0] / "coords.h5", dataclasses.replace(
        tiles, coords=np.zeros((0, 2), np.int64), tissue_fraction=np.zeros(0, np.float32), attrs={}))
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    assert extract_job(job, encoder, record, num_workers=0, progress=False).done == SLIDE_NAMES
    path = job / SLIDE_NAMES[0] / f"features_{record['tag']}.h5"
    with h5py.File(path) as h5:
        assert h5["features"].shape == (0, 192) and h5.attrs["complete"]
    assert extract_job(job, encoder, record, num_workers=0, progress=False).skipped == SLIDE_NAMES


def test_two_shards_cover_every_slide_exactly_once_and_locks_are_respected(slide_job, tiny_ckpt, tmp_path,
                                                                          monkeypatch):
    job = copy_job(slide_job, tmp_path / "job")
    for i in range(3):  # five slides: extra copies of the real ones
        shutil.copytree(job / SLIDE_NAMES[i % 2], job / f"copy{i}")
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    names = sorted(p.name for p in job.iterdir() if (p / "coords.h5").is_file())
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_shard(None) == (1, 2) and parse_shard("0/2") == (0, 2)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("1-2")
    with pytest.raises(ValueError, match="not in 0..1"):
        parse_shard("2/2")
    with claim(job / names[0] / f".features_{record['tag']}.h5.lock"):  # held by a live process (this one)
        first = extract_job(job, encoder, record, num_workers=0, shard=(0, 2), progress=False)
    second = extract_job(job, encoder, record, num_workers=0, shard=(1, 2), progress=False)
    assert first.busy == [names[0]] and first.other_shards == 2 and second.other_shards == 3
    assert sorted(first.done + first.busy + second.done) == names
    assert not set(first.done) & set(second.done)
    again = extract_job(job, encoder, record, num_workers=0, shard=(0, 2), progress=False)
    assert again.done == [names[0]] and sorted(again.skipped) == sorted(first.done)


def test_clear_errors_for_bad_jobs_and_checkpoints(tiny_ckpt, slide_job, tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nope"), "--checkpoint", str(tiny_ckpt)]) == 2
    assert "job folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["extract", str(tmp_path / "empty"), "--checkpoint", str(tiny_ckpt)]) == 2
    assert "no tiled slides" in capsys.readouterr().err
    assert main(["extract", str(slide_job), "--checkpoint", str(tiny_ckpt), "--encoder", "vit_small"]) == 2
    err = capsys.readouterr().err
    assert "vit_tiny" in err and "--encoder vit_small" in err and str(tiny_ckpt) in err
    not_a_ckpt = tmp_path / "weights.pth"  # a torch file, but not of a ViT
    torch.save(torch.nn.Linear(4, 2).state_dict(), not_a_ckpt)
    assert main(["extract", str(slide_job), "--checkpoint", str(not_a_ckpt)]) == 2
    assert str(not_a_ckpt) in capsys.readouterr().err
    assert not list(slide_job.rglob("features_*.h5")), "a failed start wrote features"


def test_cli_extract_random_init_baseline(slide_job, tmp_path, capsys):
    job = copy_job(slide_job, tmp_path / "job")
    args = ["extract", str(job), "--random-init", "vit_tiny", "--img-size", "32", "--patch-size", "8",
            "--pool", "mean", "--workers", "0", "--batch-size", "32", "--slide", SLIDE_NAMES[0]]
    assert main(args) == 0
    out = capsys.readouterr().out
    files = list((job / SLIDE_NAMES[0]).glob("features_random-vit_tiny-*-mean.h5"))
    assert len(files) == 1 and "1 slide(s) embedded" in out
    assert not list((job / SLIDE_NAMES[1]).glob("features_*.h5"))
    a = read_attrs(files[0])
    assert a["checkpoint"] == "random" and a["weights_id"].startswith("random-") and a["seed"] == 0
    assert main(args) == 0 and "1 already done" in capsys.readouterr().out
    assert os.environ.get("RANK") is None


def test_a_recorded_stain_normaliser_is_rebuilt_with_the_encoder(tiny_ckpt):
    """What mil train copies into config.json (the feature file's JSON attribute) is what diagnose applies."""
    import json

    from gcmae.encoders.loading import load_encoder
    from gcmae.slide.features import encoder_record, load_recorded_encoder
    from gcmae.stain import StainNormalizer

    encoder = load_encoder(tiny_ckpt)
    encoder.stain = StainNormalizer.fit(None, "reinhard")
    record = encoder_record(encoder, tiny_ckpt, "cls")
    assert record["tag"].endswith(record["stain_id"]) and record["stain_id"].startswith("reinhard-")
    stored = {**record, "stain": json.dumps(record["stain"])}  # as read back from HDF5 attributes
    rebuilt = load_recorded_encoder(stored)
    assert rebuilt.stain is not None and rebuilt.stain.to_dict() == encoder.stain.to_dict()
    assert load_recorded_encoder({**record, "stain": None, "stain_id": None}).stain is None


def test_tiles_resized_to_another_encoder_input_size_are_warned_about_once(slide_job, tiny_ckpt, tmp_path, caplog):
    """Issue 11 item 8: `extract` silently resized the tiles to the encoder's input size."""
    job = shutil.copytree(slide_job, tmp_path / "job")
    encoder = load_encoder(tiny_ckpt)
    record = encoder_record(encoder, tiny_ckpt, "cls")
    summary = extract_job(job, encoder, record, batch_size=16, num_workers=0, progress=False)
    warning = f"tiles of {TILE} px at {MPP:g} µm/px are resized to the encoder's 32 px input"
    assert len(summary.done) == 2 and len(summary.warnings) == 1 and warning in summary.warnings[0]
    assert caplog.text.count(warning) == 1  # once for the job, not once per slide
    assert "encoder sees 9 µm/px" in summary.warnings[0]
    settings = json.loads((job / f"extract_{record['tag']}.json").read_text())
    assert settings["summary"]["warnings"] == summary.warnings


def test_extract_options_with_stain_norm_pretrained_give_the_shipped_encoders_normaliser(tiny_ckpt):
    """`gcmae extract --checkpoint gcmae-vit-tiny-pcam --stain-norm pretrained`: the encoder gets the Macenko
    normaliser stored with it, and the feature tag and record carry its id (the same as --stain-norm macenko)."""
    from gcmae.slide.commands import _encoder
    from gcmae.slide.options import ExtractOptions
    from gcmae.stain import StainError, make_normalizer

    opts = ExtractOptions(job_dir="job", checkpoint="gcmae-vit-tiny-pcam", stain_norm="pretrained")
    encoder, record = _encoder(opts, "job")
    expected = make_normalizer("macenko").id
    assert encoder.stain is not None and encoder.stain.id == expected
    assert record["stain_id"] == expected and record["tag"].endswith(expected)
    plain = ExtractOptions(job_dir="job", checkpoint=str(tiny_ckpt), stain_norm="pretrained")  # trained on raw
    with pytest.raises(StainError, match="records no stain normalisation"):
        _encoder(plain, "job")
