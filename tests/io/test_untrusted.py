"""Untrusted inputs: YAML configs with python tags, resume checkpoints with pickled code, slide IDs that try to
escape the output folder, and hostile .npz / .h5 array files (arrays made from real PCam patches).
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from gcmae.cli import main
from gcmae.config import ConfigError, load_pretrain_config
from gcmae.io.arrays import ArrayFileError, load_array_file
from gcmae.io.checkpoints import CheckpointError, read_checkpoint
from gcmae.io.paths import safe_name, unique_names
from gcmae.slide.batch import tile_slides
from gcmae.slide.tiling import tile_slide
from gcmae.train.callbacks import AtomicCheckpointIO
from tests.conftest import SAMPLES

CMU = SAMPLES / "slides" / "cmu-1-small-region.svs"


class Payload:
    """Unpickling this creates `marker`: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    files = sorted((SAMPLES / "pcam" / "train" / "0_negative").glob("*.jpg"))[:4]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # (4, 96, 96, 3) uint8


# ---- configs -------------------------------------------------------------------------------------------------

def test_yaml_python_tag_is_refused_without_running(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "X"
    config = tmp_path / "evil.yaml"
    config.write_text(f'data:\n  train_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML.*python/object/apply:os\.system"):
        load_pretrain_config(config)
    with pytest.raises((ConfigError, yaml.YAMLError), match="python/object/apply"):  # overrides: yaml's own error
        load_pretrain_config(None, [f'data.train_dir=!!python/object/apply:os.system ["touch {marker}"]'])
    assert main(["pretrain", "--config", str(config)]) == 2
    assert not marker.exists()


# ---- checkpoints read on resume --------------------------------------------------------------------------------

def test_checkpoint_with_pickled_code_is_refused_without_running(tmp_path: Path) -> None:
    marker, path = tmp_path / "payload_ran", tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)  # what a resume calls
    with pytest.raises(CheckpointError, match="last.ckpt"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is real
    assert marker.exists()


# ---- names that become paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("TCGA-CR-7395-01A", "TCGA-CR-7395-01A"),
    ("case 12 (HE).v2", "case 12 (HE).v2"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32", "system32"),
    ("/abs/path/slide", "slide"),
    ("slides/..", "slides"),
    ("..", "unnamed"),
    ("", "unnamed"),
    (".hidden", "hidden"),
    ("a\x00b", "ab"),
    ("tab\there", "tab_here"),
    ('what?<>:"|*', "what_______"),
    ("CON", "_CON"),
    ("Präparat-ß", "Präparat-ß"),
    ("x" * 300, "x" * 200),
])
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected
    assert "/" not in safe_name(raw) and "\\" not in safe_name(raw) and not safe_name(raw).startswith(".")


def test_unique_names_never_share_a_folder() -> None:
    paths = [Path("in/a?b.svs"), Path("in/a*b.svs"), Path("in/c.svs"), Path("in/c.tif")]
    names = unique_names(paths)
    assert len(set(names.values())) == 4
    assert names[Path("in/c.svs")] == "c.svs" and names[Path("in/a?b.svs")].startswith("a_b.svs-")


def test_slide_names_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "deep" / "out"
    src.mkdir()
    shutil.copy(CMU, src / "case\\..\\..\\escape.svs")  # a legal file name on POSIX
    summary = tile_slides(src, out, tile_size=1024, mask_size=256, progress=False)
    assert summary.slides_done == 1 and (out / "escape" / "coords.h5").is_file()
    result = tile_slide(CMU, out, tile_size=1024, mask_size=256, name="../../outside", progress=False)
    assert result.out_dir == out / "outside" and (out / "outside" / "coords.h5").is_file()
    created = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(src) or p.is_relative_to(out) for p in created)


# ---- array files -----------------------------------------------------------------------------------------------

EXPECTED = {"images": (4, "u"), "labels": (1, "iu")}


def test_good_npz_and_h5_load(tmp_path: Path, patches: np.ndarray) -> None:
    labels = np.arange(4, dtype=np.int64)
    np.savez(tmp_path / "a.npz", images=patches, labels=labels, extra=np.zeros(2))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["images"], f["labels"] = patches, labels
    for name in ("a.npz", "a.h5"):
        arrays = load_array_file(tmp_path / name, EXPECTED)
        assert arrays.keys() == EXPECTED.keys()
        np.testing.assert_array_equal(arrays["images"], patches)
        np.testing.assert_array_equal(arrays["labels"], labels)


def test_npz_object_array_is_refused_without_unpickling(tmp_path: Path, patches: np.ndarray) -> None:
    marker = tmp_path / "payload_ran"
    labels = np.empty(1, dtype=object)
    labels[0] = Payload(marker)
    np.savez(tmp_path / "evil.npz", images=patches, labels=labels)  # stored as a pickle
    with pytest.raises(ArrayFileError, match=r"evil\.npz: key 'labels': object array"):
        load_array_file(tmp_path / "evil.npz", EXPECTED)
    assert not marker.exists()
    np.load(tmp_path / "evil.npz", allow_pickle=True)["labels"]  # control: the payload is real
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_wrong_shape_dtype_and_missing_keys_name_file_and_key(tmp_path: Path, patches: np.ndarray,
                                                              suffix: str) -> None:
    def write(name: str, **arrays: np.ndarray) -> Path:
        path = tmp_path / (name + suffix)
        if suffix == ".npz":
            np.savez(path, **arrays)
        else:
            with h5py.File(path, "w") as f:
                for key, value in arrays.items():
                    f[key] = value
        return path

    labels = np.arange(4)
    cases = {
        write("flat", images=patches.reshape(4, -1), labels=labels): r"key 'images': shape \(4, 27648\) is 2-D; expected 4-D",
        write("floats", images=patches.astype(np.float32), labels=labels): r"key 'images': dtype float32.*expected kind u",
        write("floatlabels", images=patches, labels=labels / 2): r"key 'labels': dtype float64.*expected kind i or u",
        write("nolabels", images=patches): r"key 'labels' missing",
    }
    for path, message in cases.items():
        with pytest.raises(ArrayFileError, match=message) as info:
            load_array_file(path, EXPECTED)
        assert str(path) in str(info.value)
    with pytest.raises(ArrayFileError, match=r"bytes > limit 1,000"):
        load_array_file(write("big", images=patches, labels=labels), EXPECTED, max_bytes=1000)


def test_not_an_array_file(tmp_path: Path) -> None:
    pickled = tmp_path / "pickle.npz"
    pickled.write_bytes(pickle.dumps({"images": 1}))  # np.load would try to unpickle this
    text = tmp_path / "text.h5"
    text.write_text("not hdf5\n")
    for path, message in [(pickled, "not a valid .npz"), (text, "not a readable HDF5"),
                          (tmp_path / "missing.npz", "not found"), (text.with_suffix(".pkl"), "not found")]:
        with pytest.raises(ArrayFileError, match=message):
            load_array_file(path, EXPECTED)
    text.with_suffix(".pkl").write_bytes(b"x")
    with pytest.raises(ArrayFileError, match="unsupported array file type"):
        load_array_file(text.with_suffix(".pkl"), EXPECTED)


def test_h5_links_groups_vlen_and_external_storage_are_refused(tmp_path: Path, patches: np.ndarray) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(patches.tobytes())  # data outside the file the user handed us
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["labels"] = np.arange(4)
    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w") as f:
        f["images"] = patches
        f["labels_ext"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "labels")
        f.create_group("labels_group")
        f.create_dataset("labels_vlen", data=np.array([b"a", b"bb"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("images_raw", shape=patches.shape, dtype=np.uint8,
                         external=[(str(secret), 0, patches.nbytes)])
        f["labels_soft"] = h5py.SoftLink("/images")
    cases = {"labels_ext": "ExternalLink", "labels_group": "Group, not an array", "labels_vlen": "object array",
             "labels_soft": "SoftLink", "images_raw": "takes its data from other files"}
    for key, message in cases.items():
        want = {"images": (4, "u"), key: (None, "iu")} if key != "images_raw" else {key: (4, "u")}
        with pytest.raises(ArrayFileError, match=f"hostile.h5: key '{key}'.*{message}"):
            load_array_file(path, want)
