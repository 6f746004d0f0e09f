"""Bad image files, made here from the real shipped patches: each is rejected with a reason or read correctly.

Cases: 0-byte file, truncated JPEG, truncated PNG, a text file named .jpg, a 20,000 x 20,000 PNG (decompression
bomb), grayscale / RGBA / 16-bit PNGs (usable, with a warning), a PNG named .jpg and a JPEG named .png (usable,
noted). Plus: files vanishing after validation are replaced deterministically, `gcmae check-data`.
"""
from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from gcmae.cli import main
from gcmae.data import ImageFolderDataset, SeededEpochSampler, pretrain_transform
from gcmae.data.validation import MAX_IMAGE_PIXELS, check_image, inspect_image, scan_folder
from tests.conftest import REPO, SAMPLES

JPG = sorted((SAMPLES / "pcam" / "train" / "1_metastatic").glob("*.jpg"))[0]
PNG = sorted((SAMPLES / "crc-val-he-7k" / "TUM").glob("*.png"))[0]
BOMB_SIDE = 20_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid 1-bit PNG of side x side blank pixels (~50 kB on disk, 400 MB as a PIL image), streamed."""
    row = b"\x00" * (1 + (side + 7) // 8)
    zc = zlib.compressobj(9)
    idat = b"".join(zc.compress(row * 1000) for _ in range(side // 1000)) + zc.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def make_bad_files(folder: Path) -> dict[str, tuple[str, str]]:
    """Write every case into `folder`; name -> (expected status, expected words in the reason/warning)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpg, png = JPG.read_bytes(), PNG.read_bytes()
    rgb = Image.open(PNG).convert("RGB")
    shutil.copy(JPG, folder / "good.jpg")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "truncated.png").write_bytes(png[: int(len(png) * 0.6)])
    (folder / "text.jpg").write_text((SAMPLES / "README.md").read_text())
    write_bomb_png(folder / "bomb.png")
    rgb.convert("L").save(folder / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(224)[:, None] < 112, 255, 0).repeat(224, 1).astype(np.uint8)))
    rgba.save(folder / "rgba.png")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(folder / "gray16.png")
    shutil.copy(PNG, folder / "png_named.jpg")
    shutil.copy(JPG, folder / "jpeg_named.png")
    (folder / "notes.txt").write_text("not an image extension: ignored\n")
    return {
        "good.jpg": ("ok", ""), "zero.jpg": ("rejected", "empty file"),
        "truncated.jpg": ("rejected", "truncated"), "truncated.png": ("rejected", "truncated"),
        "text.jpg": ("rejected", "not an image"), "bomb.png": ("rejected", "too large"),
        "gray.png": ("warning", "grayscale"), "rgba.png": ("warning", "transparency"),
        "gray16.png": ("warning", "16-bit"), "png_named.jpg": ("warning", "PNG data in a .jpg file"),
        "jpeg_named.png": ("warning", "JPEG data in a .png file"),
    }


@pytest.fixture()
def bad_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    folder = tmp_path / "images"
    return folder, make_bad_files(folder)


def test_each_case_gets_its_verdict_when_fully_decoded(bad_folder) -> None:
    folder, expected = bad_folder
    for name, (status, words) in expected.items():
        check = inspect_image(folder / name, decode=True)
        assert check.status == status, (name, check)
        assert words.lower() in (check.error or "; ".join(check.warnings)).lower(), (name, check)
        assert check_image(folder / name) == check.error
    assert "400,000,000 pixels > limit 100,000,000" in (check_image(folder / "bomb.png") or "")


def test_header_check_passes_truncated_files_that_a_full_check_rejects(bad_folder) -> None:
    folder, _ = bad_folder
    for name in ("truncated.jpg", "truncated.png"):
        assert check_image(folder / name, decode=False) is None
        assert "truncated" in (check_image(folder / name, decode=True) or "")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in gcmae (or what it imports) turned it on


def test_bomb_guard_does_not_depend_on_pil_global_limit(bad_folder, monkeypatch) -> None:
    folder, _ = bad_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled PIL's own guard
    reason = check_image(folder / "bomb.png")
    assert reason and "20000x20000" in reason and f"{MAX_IMAGE_PIXELS:,}" in reason


BOMB_MEMORY = textwrap.dedent("""
    import importlib.util, json, re, sys
    from PIL import Image
    spec = importlib.util.spec_from_file_location("validation", {module!r})  # numpy + PIL only: no torch
    validation = sys.modules["validation"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validation)
    check_image = validation.check_image
    def rss():  # peak RSS of this process image, MiB (VmHWM restarts at exec, unlike ru_maxrss)
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
    before = rss()
    reason = check_image({path!r}, decode=True)
    after_check = rss()
    Image.MAX_IMAGE_PIXELS = None  # control: without a guard, PIL really allocates the image
    with Image.open({path!r}) as img:
        img.load()
    print(json.dumps({{"reason": reason, "check_mib": after_check - before, "control_mib": rss() - after_check}}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory read from Linux /proc")
def test_bomb_is_rejected_without_allocating_it(tmp_path: Path) -> None:
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    script = BOMB_MEMORY.format(module=str(REPO / "src" / "gcmae" / "data" / "validation.py"), path=str(bomb))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "too large" in result["reason"]
    assert result["check_mib"] < 20, result
    assert result["control_mib"] > 300, result  # the measurement can see a 400 MB allocation


def test_sixteen_bit_and_alpha_are_converted_not_clipped(bad_folder) -> None:
    folder, _ = bad_folder
    gray = np.asarray(Image.open(PNG).convert("L"))
    ds = ImageFolderDataset(folder, validate="full")
    by_name = {p.name: i for i, p in enumerate(ds.files)}
    img16 = ds.load(by_name["gray16.png"])
    assert img16.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img16), np.repeat(gray[:, :, None], 3, axis=2))
    with Image.open(folder / "gray16.png") as raw:  # control: PIL's own conversion clips to white
        assert raw.mode.startswith("I") and np.asarray(raw.convert("RGB")).min() == 255
    rgba = np.asarray(ds.load(by_name["rgba.png"]))
    np.testing.assert_array_equal(rgba[:112], np.asarray(Image.open(PNG).convert("RGB"))[:112])
    assert (rgba[112:] == 255).all()  # transparent half composited onto white


def test_dataset_excludes_rejected_files_before_indexing(bad_folder) -> None:
    folder, expected = bad_folder
    ds = ImageFolderDataset(folder, validate="full")
    rejected = {n for n, (s, _) in expected.items() if s == "rejected"}
    usable = sorted(n for n in expected if n not in rejected)
    assert {p.name for p, _ in ds.rejected} == rejected
    assert [p.name for p in ds.files] == usable  # indices 0..n-1 are exactly the usable files
    assert {p.name for p, _ in ds.warnings} == {n for n, (s, _) in expected.items() if s == "warning"}
    assert ds.report() == {"images": len(usable), "rejected": len(rejected), "warnings": len(usable) - 1}
    for i in range(len(ds)):
        img, _, index = ds[i]
        assert index == i and img.mode == "RGB"
    header = ImageFolderDataset(folder, validate="header")
    assert {p.name for p, _ in header.rejected} == rejected - {"truncated.jpg", "truncated.png"}


def test_files_with_warnings_are_named_not_only_counted(bad_folder, tmp_path: Path, caplog) -> None:
    """Issue 11 item 11: data_report.json counted the files with warnings and nothing named them."""
    folder, expected = bad_folder
    ds = ImageFolderDataset(folder, validate="header")
    warned = sorted(n for n, (s, _) in expected.items() if s == "warning")
    for name in warned:
        assert f"usable with a warning: {folder / name}" in caplog.text
    ds.write_report(tmp_path / "data_report.json")
    lines = (tmp_path / "warned_images.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in lines) == warned and all("\t" in x for x in lines)
    assert json.loads((tmp_path / "data_report.json").read_text())["warnings"] == len(warned)


def test_file_vanishing_mid_run_is_replaced_deterministically(small_pcam: Path, caplog) -> None:
    ds = ImageFolderDataset(small_pcam, pretrain_transform(64))
    expected, label, index = ds[(4, 99)]
    gone = ds.files[3]
    gone.unlink()
    img, got_label, got_index = ds[(3, 99)]  # same seed, next index
    assert got_index == 4 and got_label == label and torch.equal(img, expected)
    assert [p for p, _ in ds.replaced] == [gone]
    assert str(gone) in caplog.text and "replacing sample 3 by sample 4" in caplog.text


def test_epoch_completes_when_files_vanish(small_pcam: Path) -> None:
    ds = ImageFolderDataset(small_pcam, pretrain_transform(32))
    for i in (0, 7, 8):  # 7 and 8 are consecutive: the replacement of 7 is itself gone
        ds.files[i].unlink()
    sampler = SeededEpochSampler(len(ds), batch_size=8, seed=0)
    indices = [int(i) for _, _, idx in DataLoader(ds, batch_size=8, sampler=sampler) for i in idx]
    assert len(indices) == 32 and not {0, 7, 8} & set(indices)
    assert sorted(p.name for p, _ in ds.replaced) == sorted([ds.files[0].name, ds.files[7].name,
                                                              ds.files[8].name, ds.files[8].name])


def test_too_many_consecutive_vanished_files_is_an_error_naming_them(small_pcam: Path) -> None:
    ds = ImageFolderDataset(small_pcam)
    for f in ds.files:
        f.unlink()
    with pytest.raises(OSError, match=r"consecutive images from index 2 are unreadable.*cannot read image"):
        ds[2]


def test_check_data_command(bad_folder, tmp_path: Path, capsys) -> None:
    folder, expected = bad_folder
    out = tmp_path / "report.csv"
    assert main(["check-data", str(folder), "--full", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    n_rej = sum(s == "rejected" for s, _ in expected.values())
    n_warn = sum(s == "warning" for s, _ in expected.values())
    for name, (status, words) in expected.items():
        if status != "ok":
            line = next(ln for ln in printed.splitlines() if f"{folder / name}: " in ln)
            assert line.startswith("rejected" if status == "rejected" else "warning") and words.split()[0] in line
    assert f"{len(expected)} image file(s)" in printed and f"1 ok, {n_warn} with warnings, {n_rej} rejected" in printed
    assert "1 other file(s) ignored" in printed
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert {n: r["status"] for n, r in rows.items()} == {n: s for n, (s, _) in expected.items()}
    assert all(rows[n]["reason"] for n, (s, _) in expected.items() if s != "ok")

    assert scan_folder(folder).count("rejected") == n_rej - 2  # header only: truncated files pass
    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copy(JPG, clean / JPG.name)
    assert main(["check-data", str(clean)]) == 0
    assert main(["check-data", str(tmp_path / "missing")]) == 2
