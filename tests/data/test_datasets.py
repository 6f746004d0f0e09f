import pytest
import torch

from gcmae.data import EmptyDatasetError, ImageFolderDataset, SeededEpochSampler, pretrain_transform


def test_labels_from_subfolders(small_pcam):
    ds = ImageFolderDataset(small_pcam)
    assert ds.classes == ["0_negative", "1_metastatic"]
    assert len(ds) == 32 and sorted(set(ds.labels)) == [0, 1]
    img, label, index = ds[5]
    assert img.size == (96, 96) and index == 5 and label == ds.labels[5]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyDatasetError, match="no usable images"):
        ImageFolderDataset(tmp_path / "empty")


def test_corrupt_images_are_excluded_before_indexing(small_pcam):
    good = sorted((small_pcam / "0_negative").glob("*.jpg"))
    (small_pcam / "0_negative" / "zero.jpg").write_bytes(b"")
    (small_pcam / "0_negative" / "text.jpg").write_text("not an image")
    ds = ImageFolderDataset(small_pcam)
    assert len(ds) == 32
    assert {p.name for p, _ in ds.rejected} == {"zero.jpg", "text.jpg"}
    assert all(f.name not in ("zero.jpg", "text.jpg") for f in ds.files)
    assert ds.files[0] == good[0]


def test_all_corrupt_is_an_empty_dataset(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(EmptyDatasetError, match="1 file"):
        ImageFolderDataset(tmp_path)


def test_seeded_transform_is_reproducible(small_pcam):
    ds = ImageFolderDataset(small_pcam, pretrain_transform(64))
    a, _, _ = ds[(3, 123)]
    b, _, _ = ds[(3, 123)]
    c, _, _ = ds[(3, 124)]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_ranks_split_each_global_batch_in_contiguous_chunks():
    full = [i for i, _ in SeededEpochSampler(11, batch_size=4, seed=1)]
    assert len(full) == 8 and len(set(full)) == 8  # 2 global batches of 4, the last 3 items dropped
    r0 = [i for i, _ in SeededEpochSampler(11, batch_size=2, seed=1, rank=0, world_size=2)]
    r1 = [i for i, _ in SeededEpochSampler(11, batch_size=2, seed=1, rank=1, world_size=2)]
    assert r0 == full[0:2] + full[4:6] and r1 == full[2:4] + full[6:8]
    s = SeededEpochSampler(11, batch_size=4, seed=1)
    s.set_epoch(1)
    assert [i for i, _ in s] != full
