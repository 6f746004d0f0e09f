"""Tile a folder of slides (``gcmae tile``): worker processes, resume, ``failures.csv`` and a job summary.

Each slide goes through :func:`gcmae.slide.tiling.tile_slide` into ``out_dir/<name>/``; slides whose
``coords.h5`` exists are skipped, so a killed job is finished by running it again. In ``out_dir``:
``failures.csv`` (path, reason of every slide that could not be tiled), ``tiling_config.yaml`` (the
resolved settings; a re-run with other settings is refused) and ``summary.json`` (this run's counts and
per-slide results, and the job's totals over every finished slide).
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import yaml
from tqdm import tqdm

from gcmae import __version__
from gcmae.io.atomic import write_text_atomic
from gcmae.io.paths import sweep_dead_claimers, unique_names
from gcmae.io.shared_csv import rewrite_shared_csv
from gcmae.slide.coords import COORDS_FILENAME
from gcmae.slide.reader import SlideReadError
from gcmae.slide.tiling import SlideMetadataError, TilingSettings, tile_slide, tiling_settings

logger = logging.getLogger(__name__)

SLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu",
     ".png", ".jpg", ".jpeg"}
)
CONFIG_FILENAME, SUMMARY_FILENAME, FAILURES_FILENAME = "tiling_config.yaml", "summary.json", "failures.csv"
WORKER_DIED = "worker process died while tiling (killed or out of memory); re-run to retry"


@dataclass
class SlideOutcome:
    """What happened to one slide in this run (picklable: returned by worker processes)."""

    slide: Path
    name: str
    status: str  # done | skipped | busy | failed
    n_tiles: int = 0
    seconds: float = 0.0
    reason: str | None = None  # failure reason or warning


@dataclass
class TilingSummary:
    slides_done: int = 0
    slides_skipped: int = 0  # already finished (coords.h5 present)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    tiles_written: int = 0  # tiles of the slides tiled in this run
    slides_busy: int = 0  # being tiled by another process
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    outcomes: list[SlideOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.slides_done} slide(s) tiled, {self.slides_skipped} already done, "
                f"{self.slides_busy} in progress elsewhere, {len(self.failures)} failed, "
                f"{len(self.warnings)} with warnings; {self.tiles_written} tiles")


def find_slides(folder: str | Path) -> list[Path]:
    """Slide-like files (by extension, case-insensitive) directly inside ``folder``, sorted; hidden files (names
    starting with a dot, e.g. macOS ``._x.svs`` companions) are left out, with a warning naming them."""
    found = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS)
    hidden = [p.name for p in found if p.name.startswith(".")]
    if hidden:
        logger.warning("%s: %d hidden file(s) with a slide extension not tiled (names starting with '.'; rename "
                       "them to tile them): %s", folder, len(hidden), ", ".join(hidden))
    return [p for p in found if not p.name.startswith(".")]


def _tile_one(slide: Path, out_dir: Path, name: str, settings: TilingSettings, overwrite: bool,
              progress: bool, catch: bool) -> SlideOutcome:
    """Tile one slide; runs in the main process or in a worker (a module-level function: spawn-safe)."""
    t0 = time.perf_counter()
    try:
        result = tile_slide(slide, out_dir, settings, name=name, overwrite=overwrite, progress=progress)
    except (SlideReadError, SlideMetadataError) as exc:
        if not catch:
            raise
        return SlideOutcome(slide, name, "failed", reason=str(exc), seconds=time.perf_counter() - t0)
    status = "busy" if result.busy else "skipped" if result.skipped else "done"
    return SlideOutcome(slide, name, status, n_tiles=result.n_tiles, reason=result.warning,
                        seconds=time.perf_counter() - t0)


def _run_pool(slides: list[Path], names: dict[Path, str], jobs: dict[str, Any], workers: int,
              ) -> Iterator[SlideOutcome]:
    """Outcomes as slides finish, at most ``workers`` in flight. When a worker dies (SIGKILL, OOM) the slides
    in flight are reported as failed (one of them killed it; which one cannot be told) and a new pool goes on."""
    pending = list(reversed(slides))
    context = multiprocessing.get_context("spawn")  # no fork of a process holding OpenSlide/h5py handles
    while pending:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            running: dict[Future[SlideOutcome], Path] = {}
            broken = False
            while (pending or running) and not broken:
                while pending and len(running) < workers:
                    slide = pending.pop()
                    running[pool.submit(_tile_one, slide, name=names[slide], **jobs)] = slide
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    slide = running.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        broken = True
                        yield SlideOutcome(slide, names[slide], "failed", reason=WORKER_DIED)
            for future, slide in running.items():  # the pool is broken: none of these will finish
                yield SlideOutcome(slide, names[slide], "failed", reason=WORKER_DIED)


def tile_slides(inputs: str | Path, out_dir: str | Path, settings: TilingSettings | None = None, *,
                num_workers: int = 1, overwrite: bool = False, progress: bool = True,
                **fields: Any) -> TilingSummary:
    """Tile a slide file or every slide in a folder with ``settings`` (``fields``: :class:`TilingSettings`
    fields to replace, e.g. ``tile_size=256``), with ``num_workers`` processes (1: in this process). The
    settings object goes to every worker as it is.

    Folder: unreadable slides (and slides lacking the metadata a requested ``mpp``/``magnification``
    needs) are reported, listed in ``out_dir/failures.csv`` (path, reason) and skipped. Single file: such
    errors are raised. Raises FileNotFoundError for a missing input or a folder without slides, and
    ValueError when ``out_dir`` was tiled with other settings (unless ``overwrite``).
    """
    inputs, out_dir = Path(inputs), Path(out_dir)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    settings = tiling_settings(settings, **fields)
    settings.check()
    folder_mode = inputs.is_dir()
    if folder_mode:
        slides = find_slides(inputs)
        if not slides:
            raise FileNotFoundError(f"no slide files ({', '.join(sorted(SLIDE_EXTENSIONS))}) in {inputs}")
    elif inputs.is_file():
        slides = [inputs]
    else:
        raise FileNotFoundError(f"no such slide file or folder: {inputs}")
    _check_and_save_config(out_dir, settings, inputs, overwrite)
    sweep_dead_claimers(out_dir)
    names = unique_names(slides)  # safe folder name per slide; two slides never share one
    jobs = {"out_dir": out_dir, "settings": settings, "overwrite": overwrite, "catch": folder_mode}
    summary, settled, started = TilingSummary(), [], time.perf_counter()
    bar = tqdm(total=len(slides), desc="slides", unit="slide", disable=not progress or len(slides) < 2)
    if num_workers == 1 or len(slides) == 1:
        outcomes: Iterator[SlideOutcome] = (_tile_one(s, name=names[s], progress=progress, **jobs) for s in slides)
    else:
        outcomes = _run_pool(slides, names, {**jobs, "progress": False}, min(num_workers, len(slides)))
    for outcome in outcomes:
        bar.update()
        summary.outcomes.append(outcome)
        if outcome.status == "failed":
            logger.warning("skipping %s: %s", outcome.slide, outcome.reason)
            summary.failures.append((outcome.slide, outcome.reason or "failed"))
        elif outcome.status == "busy":
            summary.slides_busy += 1
        else:
            settled.append(outcome.slide)
            if outcome.status == "skipped":
                summary.slides_skipped += 1
            else:
                summary.slides_done += 1
                summary.tiles_written += outcome.n_tiles
                if outcome.reason:
                    summary.warnings.append((outcome.slide, outcome.reason))
    bar.close()
    position = {slide: i for i, slide in enumerate(slides)}
    summary.outcomes.sort(key=lambda o: position[o.slide])
    summary.seconds = time.perf_counter() - started
    if folder_mode:
        _update_failures(out_dir / FAILURES_FILENAME, settled, summary.failures)
    _write_summary(out_dir, inputs, summary)
    logger.info("tiling %s -> %s: %s", inputs, out_dir, summary)
    return summary


def _check_and_save_config(out_dir: Path, settings: TilingSettings, inputs: Path, overwrite: bool) -> None:
    """Refuse to mix settings in one job folder (finished slides would keep the old ones), then save them."""
    path = out_dir / CONFIG_FILENAME
    wanted = asdict(settings)
    if path.exists() and not overwrite:
        try:
            saved = (yaml.safe_load(path.read_text()) or {}).get("settings", {})
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML ({exc}); delete it or use --overwrite") from exc
        changed = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if changed:
            listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"{out_dir} was tiled with other settings ({listing}); use another --out, "
                             f"or --overwrite to redo every slide")
    text = yaml.safe_dump({"settings": wanted, "input": str(inputs.resolve()), "gcmae_version": __version__},
                          sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        write_text_atomic(path, text)


def _job_totals(out_dir: Path) -> dict[str, int]:
    """Slides finished in ``out_dir`` (a ``coords.h5`` each) and their tiles, from the files' headers."""
    slides = tiles = 0
    for coords in out_dir.glob(f"*/{COORDS_FILENAME}"):
        try:
            with h5py.File(coords, "r") as h5:
                tiles += int(h5["coords"].shape[0])
            slides += 1
        except (OSError, KeyError):
            logger.warning("unreadable %s (ignored in the totals)", coords)
    return {"slides_finished": slides, "tiles": tiles}


def _write_summary(out_dir: Path, inputs: Path, summary: TilingSummary) -> None:
    def jsonable(o: SlideOutcome) -> dict[str, Any]:
        return {**asdict(o), "slide": str(o.slide), "seconds": round(o.seconds, 3)}

    done_seconds = sum(o.seconds for o in summary.outcomes if o.status == "done")
    report = {
        "input": str(inputs.resolve()), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "this_run": {"slides_done": summary.slides_done, "slides_skipped": summary.slides_skipped,
                     "slides_busy": summary.slides_busy, "slides_failed": len(summary.failures),
                     "tiles": summary.tiles_written, "seconds": round(summary.seconds, 3),
                     "tiles_per_second": round(summary.tiles_written / summary.seconds, 1)
                     if summary.seconds > 0 else math.nan,
                     "slide_seconds": round(done_seconds, 3)},
        "job": _job_totals(out_dir),
        "slides": [jsonable(o) for o in summary.outcomes],
    }
    write_text_atomic(out_dir / SUMMARY_FILENAME, json.dumps(report, indent=2))


def _update_failures(path: Path, settled: list[Path], failures: list[tuple[Path, str]]) -> None:
    """Rewrite failures.csv (other processes may share it): this run's failures plus earlier rows, except those
    of slides this run settled (finished or found done) or that are gone."""
    done = {p.resolve() for p in settled}
    failed = {p.resolve(): (str(p), reason) for p, reason in failures}

    def update(rows: dict[str, str]) -> dict[str, str]:
        earlier = {Path(p).resolve(): (p, reason) for p, reason in rows.items()}
        kept = {p: row for p, row in earlier.items() if p not in done and p.is_file()}
        return dict({**kept, **failed}.values())

    rewrite_shared_csv(path, ("path", "reason"), update)
