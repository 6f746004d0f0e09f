"""Processes sharing one tiling output folder: killed mid-run, or running side by side, on real slide copies.

Every slide must end up tiled exactly once, with outputs identical to tiling it alone; a slide whose process was
killed is never taken as finished, and its stale lock (dead pid) is taken over by the next run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gcmae.io.paths import claim, try_claim
from gcmae.slide.coords import read_coords_h5
from gcmae.slide.batch import tile_slides
from gcmae.slide.tiling import tile_slide
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow  # real pretraining, slides or subprocesses: skipped by `make test-fast`

CMU = SAMPLES / "slides" / "cmu-1-small-region.svs"
OPTS = {"tile_size": 512, "mask_size": 512, "export_png": True, "progress": False}
JOB_FILES = ["failures.csv", "summary.json", "tiling_config.yaml"]


def outputs(slide_dir: Path) -> dict[str, object]:
    """Every output file of a slide, relative path -> bytes; coords.h5 as its content, without what differs
    between two runs of the same slide (creation time, slide path and name)."""
    found: dict[str, object] = {}
    for p in sorted(slide_dir.rglob("*")):
        if p.name == "coords.h5":
            t = read_coords_h5(p)
            attrs = {k: "nan" if isinstance(v, float) and math.isnan(v) else v  # nan != nan
                     for k, v in t.attrs.items() if k != "created"}
            found[p.name] = (t.grid, t.coords.tolist(), t.tissue_fraction.tolist(), t.slide_mpp, t.dimensions,
                             sorted(attrs.items()))
        elif p.is_file():
            found[str(p.relative_to(slide_dir))] = p.read_bytes()
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every output of the CMU slide tiled alone."""
    result = tile_slide(CMU, tmp_path_factory.mktemp("reference"), name="ref", **OPTS)
    assert result.n_tiles > 3
    return outputs(result.out_dir)


def _slides(folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(CMU, folder / f"{name}.svs")
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


KILLED_TILING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import gcmae.slide.tiling as tiling
    from gcmae.slide.batch import tile_slides

    first_done, real_save, saved = Path({out!r}) / "a" / "coords.h5", tiling._save_png, []
    def save_then_die(image, path):
        real_save(image, path)
        if first_done.exists() and path.parent.name == "tiles":
            saved.append(path)
            if len(saved) == 2:  # slide b is half written: die without any clean-up
                os.kill(os.getpid(), signal.SIGKILL)
    tiling._save_png = save_then_die
    tile_slides({src!r}, {out!r}, tile_size=512, mask_size=512, export_png=True, progress=False)
""")


def test_killed_folder_run_is_completed_by_a_rerun(tmp_path: Path, reference: dict[str, object]) -> None:
    src, out = _slides(tmp_path / "slides", ["a", "b", "c"]), tmp_path / "out"
    script = KILLED_TILING.format(repo=str(REPO / "src"), src=str(src), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -9, stderr[-2000:]
    assert outputs(out / "a") == reference  # finished before the kill
    assert not (out / "b" / "coords.h5").exists() and len(list((out / "b" / "tiles").glob("*.png"))) == 2
    assert not (out / "c").exists()
    assert (out / ".b.lock").read_text().split()[0] == str(proc.pid)  # stale: its owner is dead
    finished_a = {p: p.stat().st_mtime_ns for p in (out / "a").rglob("*")}

    summary = tile_slides(src, out, **OPTS)

    assert (summary.slides_done, summary.slides_skipped, summary.slides_busy, summary.failures) == (2, 1, 0, [])
    for name in ("a", "b", "c"):
        assert outputs(out / name) == reference, name
    assert {p: p.stat().st_mtime_ns for p in finished_a} == finished_a  # not redone
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", *JOB_FILES]  # no lock, no temp file


TILING_WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import gcmae.slide.batch as batch

    done, real_tile_slide = [], batch.tile_slide
    def recording_tile_slide(path, *args, **kwargs):
        result = real_tile_slide(path, *args, **kwargs)
        if not result.skipped:
            done.append(Path(path).stem)
        return result
    batch.tile_slide = recording_tile_slide
    Path({ready!r}).touch()
    while not Path({go!r}).exists():
        time.sleep(0.005)
    s = batch.tile_slides({src!r}, {out!r}, tile_size=512, mask_size=512, export_png=True, progress=False)
    print(json.dumps({{"done": done, "skipped": s.slides_skipped, "busy": s.slides_busy,
                      "failures": len(s.failures)}}))
""")


def test_two_processes_tile_each_slide_exactly_once(tmp_path: Path, reference: dict[str, object]) -> None:
    names = ["a", "b", "c", "d", "e"]
    src, out, go = _slides(tmp_path / "slides", names), tmp_path / "out", tmp_path / "go"
    workers = []
    for i in range(2):
        script = TILING_WORKER.format(repo=str(REPO / "src"), ready=str(tmp_path / f"ready{i}"), go=str(go),
                                      src=str(src), out=str(out))
        workers.append(subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start together, on the same first slide
    results = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=120)
        assert w.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    done = [set(r["done"]) for r in results]
    assert not done[0] & done[1], results  # nobody tiled a slide the other one tiled
    assert done[0] | done[1] == set(names), results
    assert all(r["failures"] == 0 for r in results)
    assert all(len(r["done"]) + r["skipped"] + r["busy"] == len(names) for r in results)
    for name in names:
        assert outputs(out / name) == reference, name
    assert sorted(p.name for p in out.iterdir()) == [*names, *JOB_FILES]


def test_slide_claimed_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    src, out = _slides(tmp_path / "slides", ["a", "b"]), tmp_path / "out"
    out.mkdir()
    live = f"1 {socket.gethostname()}"  # pid 1 is always alive
    (out / ".a.lock").write_text(live)
    (out / ".b.lock").write_text(f"{_dead_pid()} some-other-host")  # cannot tell: never taken over
    summary = tile_slides(src, out, **OPTS)
    assert (summary.slides_done, summary.slides_busy, summary.failures) == (0, 2, [])
    assert not (out / "a").exists() and (out / ".a.lock").read_text() == live


def test_stale_and_unwritten_locks(tmp_path: Path, monkeypatch) -> None:
    lock = tmp_path / ".x.lock"
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}")
    with claim(lock) as mine:  # the owner is dead: taken over
        assert mine and lock.read_text().split()[0] != "1"
        assert not try_claim(lock)  # held by this very process
    assert not lock.exists()  # released
    lock.write_text("")  # a process is creating it right now
    assert not try_claim(lock)
    import gcmae.io.paths as paths
    monkeypatch.setattr(paths, "UNWRITTEN_LOCK_GRACE_S", 0.0)  # ... or died before writing its pid
    time.sleep(0.01)
    assert try_claim(lock)


def test_a_claim_cut_short_leaves_no_empty_lock(tmp_path: Path, monkeypatch) -> None:
    """A worker SIGKILLed while claiming must not leave an ownerless lock that makes the re-run skip the slide
    as 'in progress elsewhere' (it did, in CI: the kill landed between creating the lock and writing the pid)."""
    import gcmae.io.paths as paths

    lock = tmp_path / ".x.lock"

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(paths.os, "link", die)  # the last step of the claim
        with pytest.raises(Killed):
            try_claim(lock)
    assert not lock.exists()
    assert list(tmp_path.iterdir()) == []  # and an interrupted claim (Ctrl-C) tidies its private file
    assert try_claim(lock)
    assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"


def test_files_left_by_a_claimer_killed_mid_claim_are_swept(tmp_path: Path) -> None:
    src, out = _slides(tmp_path / "slides", ["a"]), tmp_path / "out"
    out.mkdir()
    host = socket.gethostname()
    dead, other_host, alive = (out / f".a.lock.{host}.{_dead_pid()}.0a1b2c3d.tmp",
                               out / f".a.lock.elsewhere.{_dead_pid()}.0a1b2c3d.tmp",
                               out / f".a.lock.{host}.1.0a1b2c3d.stale")
    for path in (dead, other_host, alive):
        path.write_text("")
    summary = tile_slides(src, out, **OPTS)  # a job sweeps its folder when it starts
    assert summary.slides_done == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(["a", other_host.name, alive.name, *JOB_FILES])
