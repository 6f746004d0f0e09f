"""Labelled image folders as evaluation reads them: opened with the evaluation transform, classes checked."""
from __future__ import annotations

from pathlib import Path

from gcmae.config import PATHOLOGY_MEAN, PATHOLOGY_STD
from gcmae.data.datasets import ImageFolderDataset
from gcmae.data.transforms import eval_transform
from gcmae.data.validation import find_images

Stats = tuple[float, float, float]


class EmptyClassError(ValueError):
    """A class sub-folder of a labelled evaluation folder holds no usable image."""


def open_folder(folder: str | Path, img_size: int | None = None, mean: Stats = PATHOLOGY_MEAN,
                std: Stats = PATHOLOGY_STD, labelled: bool = True) -> ImageFolderDataset:
    """The validated image folder, with the evaluation transform when `img_size` is given; with `labelled`,
    class sub-folders are required, and one without a usable image is an error (dropping it would score the
    other classes as if it did not exist). Files unreadable at embedding time are excluded, never replaced."""
    dataset = ImageFolderDataset(folder, eval_transform(img_size, mean, std) if img_size else None,
                                 unreadable="exclude")
    if labelled and not dataset.classes:
        raise ValueError(f"{folder}: needs one sub-folder per class (images directly in the folder have no label)")
    if labelled:
        subdirs = sorted(d.name for d in dataset.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        empty = [d for d in subdirs if d not in dataset.classes]
        if empty:
            rejected = {p.relative_to(dataset.root).parts[0] for p, _ in dataset.rejected}
            detail = "; ".join(f"{d}/ ({'only unreadable files' if d in rejected else 'no images'})"
                               for d in empty)
            raise EmptyClassError(
                f"{folder}: class folder(s) without a usable image: {detail}. Add images, or remove the folder to "
                f"evaluate {len(dataset.classes)} classes ({', '.join(dataset.classes)})")
    return dataset


def check_same_classes(train_classes: list[str], train_root: Path, val_classes: list[str], val_root: Path) -> None:
    """ValueError when the two folders do not have the same class sub-folders."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise ValueError(
        f"class sets differ: {train_root} has {len(train_classes)} classes {train_classes}, {val_root} has "
        f"{len(val_classes)} classes {val_classes} (only in train: {only_train or 'none'}; only in val: "
        f"{only_val or 'none'})")


def same_images(a: str | Path, b: str | Path) -> bool:
    """Whether two folders hold the same images: the same folder (resolved), or the same relative file names
    with the same content (a copy)."""
    if not a or not b:
        return False
    a, b = Path(a), Path(b)
    if not (a.is_dir() and b.is_dir()):
        return False
    if a.resolve() == b.resolve():
        return True
    if sorted(d.name for d in a.iterdir() if d.is_dir()) != sorted(d.name for d in b.iterdir() if d.is_dir()):
        return False  # other class folders (an extra, empty one is an error reported when the folder is opened)
    files_a, files_b = find_images(a), find_images(b)
    names_a = [(str(f.relative_to(a)), f.stat().st_size) for f in files_a]
    if not names_a or names_a != [(str(f.relative_to(b)), f.stat().st_size) for f in files_b]:
        return False
    return all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(files_a, files_b))



def first_image_side(folder: str | Path) -> tuple[int, Path]:
    """(longer side in px, path) of the first image under `folder` (sorted, recursive)."""
    from PIL import Image

    images = find_images(Path(folder))
    if not images:
        raise FileNotFoundError(f"{folder}: no image to take the input size from; pass --img-size")
    with Image.open(images[0]) as im:
        return max(im.size), images[0]
