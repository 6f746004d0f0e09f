"""Split a folder of class folders into two disjoint parts, stratified by class, as symbolic links.

    python -m gcmae.experiments.split_folder ../shared/data/pcam/train --out runs/split --seed 0

writes `runs/split/A/<class>/` and `runs/split/B/<class>/`: in every class, the sorted image files are shuffled
with one `random.Random(seed)` (classes in sorted order) and the first `int(n * fraction)` go to A, the rest to B.
Pretraining on A and cross-validating a probe on B asks whether what the encoder learnt carries to images it never
saw from the same slides (docs/learning_cpu_hour.md). Links are absolute; a re-run with the same arguments
leaves them as they are, and a folder holding another split is refused.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from gcmae.data.validation import find_images


def split_folder(root: str | Path, out: str | Path, fraction: float = 0.5, seed: int = 0) -> dict[str, dict[str, int]]:
    """Link the images of every class folder of `root` into `out`/A and `out`/B; returns the counts per part and
    class."""
    root, out = Path(root).resolve(), Path(out)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders")
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {"A": {}, "B": {}}
    for name in classes:
        files = find_images(root / name)
        if len(files) < 2:
            raise ValueError(f"{root / name} has {len(files)} image(s); a split needs at least 2 per class")
        rng.shuffle(files)
        cut = min(max(int(len(files) * fraction), 1), len(files) - 1)
        for part, chosen in (("A", files[:cut]), ("B", files[cut:])):
            folder = out / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                link = folder / f.relative_to(root / name).as_posix().replace("/", "__")
                if link.is_symlink() or link.exists():
                    if link.resolve() != f.resolve():
                        raise ValueError(f"{link} already points to {link.resolve()}, not {f}: {out} holds another "
                                         "split; use another --out")
                    continue
                link.symlink_to(f)
            counts[part][name] = len(chosen)
    for part in ("A", "B"):
        for name in classes:
            held = len(find_images(out / part / name))
            if held != counts[part][name]:
                raise ValueError(f"{out / part / name} holds {held} images, this split puts {counts[part][name]} "
                                 "there: it holds another split; use another --out")
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="a folder of class folders of images")
    p.add_argument("--out", type=Path, required=True, help="where A/ and B/ are written")
    p.add_argument("--fraction", type=float, default=0.5, help="share of every class that goes to A")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        counts = split_folder(args.root, args.out, args.fraction, args.seed)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"split_folder: {err}") from None
    for part, per_class in counts.items():
        print(f"{args.out / part}: " + ", ".join(f"{n} {c}" for c, n in per_class.items()))


if __name__ == "__main__":
    main()
