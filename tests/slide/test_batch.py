"""Batch tiling with worker processes (``gcmae tile --num-workers N``) on copies of the real CMU slide: the same
outputs as tiling each slide alone, a SIGKILLed worker or a SIGKILLed job finished by a re-run with no slide
missing or tiled twice, the job's summary and settings, and the command line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
import yaml

from gcmae.cli import main
from gcmae.slide.batch import WORKER_DIED, tile_slides
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.tiling import tile_slide
from tests.conftest import REPO, SAMPLES
from tests.slide.test_concurrency import outputs

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

CMU = SAMPLES / "slides" / "cmu-1-small-region.svs"
OPTS = {"tile_size": 256, "mask_size": 512, "export_png": True, "progress": False}
JOB_FILES = ["failures.csv", "summary.json", "tiling_config.yaml"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    result = tile_slide(CMU, tmp_path_factory.mktemp("reference"), name="ref", **OPTS)
    assert result.n_tiles > 20
    return outputs(result.out_dir)


def _slides(folder: Path, names: list[str], extra: dict[str, bytes] | None = None) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(CMU, folder / f"{name}.svs")
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


def test_workers_give_the_outputs_of_tiling_alone(tmp_path: Path, reference: dict[str, object]) -> None:
    data = CMU.read_bytes()
    src = _slides(tmp_path / "slides", ["a", "b", "c"],
                  {"truncated.svs": data[: len(data) // 2], "text.svs": b"not a slide\n"})
    out = tmp_path / "out"
    summary = tile_slides(src, out, num_workers=2, **OPTS)
    assert (summary.slides_done, summary.slides_skipped, summary.slides_busy) == (3, 0, 0)
    assert sorted(p.name for p, _ in summary.failures) == ["text.svs", "truncated.svs"]
    assert all("not a supported slide format or corrupt" in r for _, r in summary.failures)
    for name in "abc":
        assert outputs(out / name) == reference, name
    assert sorted(p.name for p in out.iterdir()) == sorted(["a", "b", "c", *JOB_FILES])
    failures = (out / "failures.csv").read_text().splitlines()
    assert failures[0] == "path,reason" and sorted(Path(r.split(",")[0]).name for r in failures[1:]) == \
        ["text.svs", "truncated.svs"]

    report = json.loads((out / "summary.json").read_text())
    n = len(read_coords_h5(out / "a" / "coords.h5"))
    assert report["this_run"]["slides_done"] == 3 and report["this_run"]["slides_failed"] == 2
    assert report["this_run"]["tiles"] == summary.tiles_written == 3 * n
    assert report["job"] == {"slides_finished": 3, "tiles": 3 * n}
    assert [s["status"] for s in report["slides"]] == ["done", "done", "done", "failed", "failed"]
    config = yaml.safe_load((out / "tiling_config.yaml").read_text())
    assert config["settings"] == {"tile_size": 256, "mpp": None, "magnification": None, "slide_mpp": None,
                                  "min_tissue": 0.5, "overlap": 0, "mask_size": 512, "remove_pen": False,
                                  "export_png": True}

    again = tile_slides(src, out, num_workers=2, **OPTS)
    assert (again.slides_done, again.slides_skipped, len(again.failures)) == (0, 3, 2)
    assert json.loads((out / "summary.json").read_text())["job"] == {"slides_finished": 3, "tiles": 3 * n}
    with pytest.raises(ValueError, match=r"tiled with other settings \(tile_size: 256 -> 224"):
        tile_slides(src, out, **{**OPTS, "tile_size": 224})


def _kill_when_half_written(out: Path, names: list[str], killed: list[tuple[str, int]]) -> None:
    """Watch the slides' locks (they hold the worker's pid); SIGKILL the first worker seen with a slide
    partly exported (some PNGs, no coords.h5)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        for name in names:
            lock, tiles = out / f".{name}.lock", out / name / "tiles"
            try:
                pid = int(lock.read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if len(list(tiles.glob("x*.png"))) >= 3 and not (out / name / "coords.h5").exists():
                os.kill(pid, signal.SIGKILL)
                killed.append((name, pid))
                return
        time.sleep(0.002)


def test_a_killed_worker_fails_only_its_slides_and_a_rerun_finishes(tmp_path: Path,
                                                                    reference: dict[str, object]) -> None:
    names = ["a", "b", "c", "d", "e"]
    src, out = _slides(tmp_path / "slides", names), tmp_path / "out"
    killed: list[tuple[str, int]] = []
    watcher = threading.Thread(target=_kill_when_half_written, args=(out, names, killed), daemon=True)
    watcher.start()
    first = tile_slides(src, out, num_workers=2, **OPTS)
    watcher.join()
    assert killed, "no worker was caught mid-slide"
    victim = killed[0][0]
    failed = {p.stem for p, _ in first.failures}
    assert victim in failed and len(failed) <= 2  # the slides in flight when the worker died
    assert all(reason == WORKER_DIED for _, reason in first.failures)
    assert first.slides_done == len(names) - len(failed)  # a new pool went on with the rest
    assert not (out / victim / "coords.h5").exists()

    second = tile_slides(src, out, num_workers=2, **OPTS)
    assert (second.slides_done, second.slides_skipped, second.failures) == (len(failed), len(names) - len(failed), [])
    for name in names:
        assert outputs(out / name) == reference, name
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, *JOB_FILES])  # no lock, no temp file left
    assert (out / "failures.csv").read_text() == "path,reason\n"


def test_a_killed_job_is_finished_by_running_it_again(tmp_path: Path, reference: dict[str, object]) -> None:
    """`gcmae tile --num-workers 2` SIGKILLed as a whole (process group: the job and its workers) mid-run."""
    names = ["a", "b", "c", "d"]
    src, out = _slides(tmp_path / "slides", names), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "gcmae", "tile", str(src), "--out", str(out), "--tile-size", "256",
           "--num-workers", "2", "--export-png", "--mask-size", "512"]
    job = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = [n for n in names if (out / n / "coords.h5").exists()]
            partial = [n for n in names if n not in done and len(list((out / n / "tiles").glob("x*.png"))) >= 2]
            if done and partial:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the job never had a slide finished and another one half-way")
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finished = {n: (out / n / "coords.h5").stat().st_mtime_ns for n in names if (out / n / "coords.h5").exists()}
    assert 0 < len(finished) < len(names)

    summary = tile_slides(src, out, num_workers=2, **OPTS)
    assert summary.failures == [] and summary.slides_busy == 0
    assert (summary.slides_done, summary.slides_skipped) == (len(names) - len(finished), len(finished))
    assert {n: (out / n / "coords.h5").stat().st_mtime_ns for n in finished} == finished  # not redone
    for name in names:
        assert outputs(out / name) == reference, name
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, *JOB_FILES])


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _slides(tmp_path / "slides", ["cmu"], {"text.svs": b"hello\n"})
    shutil.copy(SAMPLES / "slides" / "tcga-cr-7395-01a-01-ts1.svs", src / "tcga.svs")
    out = tmp_path / "job"
    rc = main(["tile", str(src), "--out", str(out), "--mpp", "1.0", "--tile-size", "128", "--overlap", "32",
               "--min-tissue", "0.6", "--remove-pen", "--num-workers", "2", "--mask-size", "512"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tiled 1 slide(s)" in printed and "2 failed" in printed and "text.svs" in printed
    assert "tcga.svs" in printed and "--slide-mpp" in printed
    with h5py.File(out / "cmu" / "coords.h5", "r") as h5:
        assert h5.attrs["mpp"] == 1.0 and h5.attrs["overlap"] == 32 and h5.attrs["min_tissue"] == 0.6
        extent = int(h5.attrs["extent"])  # 128 px at 1 µm/px = round(128 / 0.499) = 257 level-0 px
        assert bool(h5.attrs["remove_pen"]) and extent == 257 and h5.attrs["step"] == 257 - round(32 * 257 / 128)
        assert h5["coords"].shape[0] > 0 and (h5["tissue_fraction"][()] >= 0.6).all()
    assert not (out / "cmu" / "tiles").exists()  # coordinates only by default
    assert main(["tile", str(src), "--out", str(out), "--mpp", "0.5"]) == 2
    assert "tiled with other settings" in capsys.readouterr().err
    assert main(["tile", str(src), "--out", str(tmp_path / "mag"), "--magnification", "5", "--tile-size", "128",
                 "--mask-size", "256"]) == 0
    assert "tcga.svs: slide tcga.svs has no objective-power metadata" in capsys.readouterr().out
    assert read_coords_h5(tmp_path / "mag" / "cmu" / "coords.h5").grid.read_size == 512


def test_hidden_slide_files_are_named_not_silently_skipped(tmp_path, caplog):
    """Issue 11 item 11: a slide whose name starts with a dot was skipped without a word."""
    from gcmae.slide.batch import find_slides

    cmu = Path(__file__).resolve().parents[2] / "data" / "samples" / "slides" / "cmu-1-small-region.svs"
    (tmp_path / "a.svs").symlink_to(cmu)
    (tmp_path / ".b.svs").symlink_to(cmu)
    (tmp_path / ".notes.txt").write_text("not a slide")
    assert [p.name for p in find_slides(tmp_path)] == ["a.svs"]
    assert "1 hidden file(s) with a slide extension not tiled" in caplog.text and ".b.svs" in caplog.text
    assert ".notes.txt" not in caplog.text
