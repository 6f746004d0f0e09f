"""Stain normalisation (Macenko, Reinhard) fitted once to a target image, applied to batches of tiles.

The maths is torchstain's (``TorchMacenkoNormalizer``, ``TorchReinhardNormalizer``); this module adds what a job
needs around it: fitting to a target file (or the shipped default, see ``targets/README.md``), batches of uint8 or
float tensors (and batches already normalised for an encoder), a per-tile pass-through with a failure mask where
the stain cannot be estimated (background, torchstain raising, non-finite results), and a plain, hashable
``to_dict`` so a feature file or a model records exactly which normalisation made its features.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

METHODS = ("macenko", "reinhard")
CHOICES = ("none", *METHODS)  # what --stain-norm accepts; "none" means no normaliser
DEFAULT_TARGET = Path(__file__).parent / "targets" / "crc-norm-tcga-ckfphlvw.png"
IO = 240.0  # transmitted light intensity (torchstain's default)
ALPHA = 1.0  # Macenko: angle percentile (1 and 99)
BETA = 0.15  # optical density below which a pixel is background (in any channel)
MIN_TISSUE = 0.05  # a tile with fewer stained pixels than this fraction is passed through unchanged
_PARAM_SHAPES = {"macenko": {"HERef": (3, 2), "maxCRef": (2,)},
                 "reinhard": {"target_means": (3,), "target_stds": (3,)}}

ImageLike = str | Path | np.ndarray | torch.Tensor | Image.Image


class StainError(ValueError):
    """A target that cannot be fitted, or a stored normaliser that cannot be read."""


@dataclass
class StainBatch:
    """Normalised images (same shape, dtype and value range as given) and which tiles were passed through."""

    images: torch.Tensor
    failed: torch.Tensor  # (B,) bool: True where the tile is returned unchanged

    @property
    def num_failed(self) -> int:
        return int(self.failed.sum())


ID_SIGNIFICANT_DIGITS = 4


def _rounded(values: Any, significant: int) -> Any:
    """Nested lists of floats rounded to `significant` digits (as JSON would print them)."""
    if isinstance(values, list):
        return [_rounded(v, significant) for v in values]
    return float(f"{values:.{significant}g}")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _to_chw255(image: ImageLike) -> tuple[torch.Tensor, str, str]:
    """(3, H, W) float32 in [0, 255], its sha256 (of the file, else of the pixels) and a name."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise StainError(f"stain target not found: {path}")
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise StainError(f"stain target {path}: not a readable image ({err})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float(), _sha256_file(path), path.name
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise StainError(f"stain target array has shape {image.shape}; expected (H, W, 3) RGB")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    t = image.detach().cpu()
    if t.ndim != 3 or t.shape[0] != 3:
        raise StainError(f"stain target tensor has shape {tuple(t.shape)}; expected (3, H, W)")
    t = t.float() if t.dtype == torch.uint8 else t.float() * 255.0
    digest = hashlib.sha256(f"{tuple(t.shape)}".encode() + t.numpy().tobytes()).hexdigest()
    return t, digest, "array"


# which pixels count as stained: Macenko needs optical density >= beta in every channel (the pixels torchstain
# estimates the stain vectors from); Reinhard only needs a pixel that is not background, so saturated tiles whose
# blue channel is near 255 (dense debris, some lymphocyte sheets) are normalised instead of passed through
TISSUE_RULES = {"macenko": "od_every_channel", "reinhard": "od_any_channel"}


def tissue_fraction(image: torch.Tensor, io: float = IO, beta: float = BETA, rule: str = "od_every_channel") -> float:
    """Share of the pixels of a (3, H, W) [0, 255] image whose optical density is >= `beta` in every channel
    (`rule` "od_every_channel") or in at least one ("od_any_channel")."""
    stained = -torch.log((image.float() + 1.0) / io) >= beta
    return float((stained.all(dim=0) if rule == "od_every_channel" else stained.any(dim=0)).float().mean())


class StainNormalizer:
    """A Macenko or Reinhard normaliser with fixed target parameters.

    Build one with :meth:`fit` (a target image) or :meth:`from_dict` (what :meth:`to_dict` stored). ``normalize``
    takes (B, 3, H, W) uint8 [0, 255] or float [0, 1] tensors on any device; ``normalize_encoder_input`` takes
    batches already normalised with an encoder's mean/std. Tiles with less than ``min_tissue`` stained pixels, or
    where torchstain raises or returns non-finite values, come back unchanged and are flagged in ``failed``.
    """

    def __init__(self, method: str, params: dict[str, Sequence[Any]], target_sha256: str, target_name: str = "",
                 min_tissue: float = MIN_TISSUE) -> None:
        if method not in METHODS:
            raise StainError(f"stain normalisation method must be one of {', '.join(METHODS)}, got {method!r}")
        shapes = _PARAM_SHAPES[method]
        if set(params) != set(shapes):
            raise StainError(f"{method} parameters must be {sorted(shapes)}, got {sorted(params)}")
        self.params: dict[str, torch.Tensor] = {}
        for key, shape in shapes.items():
            t = torch.tensor(params[key], dtype=torch.float32)
            if tuple(t.shape) != shape or not torch.isfinite(t).all():
                raise StainError(f"{method} parameter {key}: expected {shape} finite numbers, got {params[key]!r}")
            self.params[key] = t
        self.method, self.target_sha256, self.target_name = method, str(target_sha256), str(target_name)
        self.min_tissue = float(min_tissue)
        self._engines: dict[str, Any] = {}  # torchstain objects per device, built on first use

    # ------------------------------------------------------------------------------------- fit / identity
    @classmethod
    def fit(cls, target: ImageLike | None = None, method: str = "macenko",
            min_tissue: float = MIN_TISSUE) -> StainNormalizer:
        """Fit to `target` (a file, an (H, W, 3) uint8 array, a (3, H, W) tensor; default: the shipped tile)."""
        if method not in METHODS:
            raise StainError(f"stain normalisation method must be one of {', '.join(METHODS)}, got {method!r}")
        image, digest, name = _to_chw255(DEFAULT_TARGET if target is None else target)
        where = f"stain target {target if target is not None else DEFAULT_TARGET}"
        frac = tissue_fraction(image, rule=TISSUE_RULES[method])
        if frac < min_tissue:
            raise StainError(f"{where}: only {frac:.1%} of its pixels are stained (needs >= {min_tissue:.0%}); "
                             f"choose a tile with tissue")
        from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

        try:
            if method == "macenko":
                engine = TorchMacenkoNormalizer()
                engine.fit(image, Io=IO, alpha=ALPHA, beta=BETA)
                params = {"HERef": engine.HERef.tolist(), "maxCRef": engine.maxCRef.tolist()}
            else:
                engine = TorchReinhardNormalizer()
                engine.fit(image)
                params = {"target_means": engine.target_means.tolist(), "target_stds": engine.target_stds.tolist()}
        except RuntimeError as err:
            raise StainError(f"{where}: torchstain could not fit {method} ({err})") from None
        try:
            return cls(method, params, digest, name, min_tissue)
        except StainError as err:  # e.g. non-finite parameters
            raise StainError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Everything that determines the output, plus the target's digest and name and the id (JSON-safe)."""
        core = self._core()
        return {**core, "target_sha256": self.target_sha256, "target_name": self.target_name,
                "library": f"torchstain {version('torchstain')}", "id": self.id}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> StainNormalizer:
        """The normaliser `to_dict` described (a dict or its JSON); StainError when it is not one or was edited."""
        try:
            d = json.loads(data) if isinstance(data, str) else dict(data)
            consts = {k: float(d[k]) for k in ("io", "alpha", "beta")}
            norm = cls(d["method"], d["params"], d["target_sha256"], d.get("target_name", ""), d["min_tissue"])
        except (ValueError, KeyError, TypeError) as err:
            raise StainError(f"not a stored stain normaliser ({type(err).__name__}: {err})") from None
        if consts != {"io": IO, "alpha": ALPHA, "beta": BETA}:
            raise StainError(f"stored stain normaliser uses io/alpha/beta {consts}; this version applies "
                             f"{IO}/{ALPHA}/{BETA}")
        if d.get("tissue_rule", "od_every_channel") != TISSUE_RULES[norm.method]:
            raise StainError(f"stored {norm.method} normaliser passes tiles through by the rule "
                             f"{d.get('tissue_rule', 'od_every_channel')!r} (an earlier gcmae); this version uses "
                             f"{TISSUE_RULES[norm.method]!r}: re-extract the features with this version")
        if d.get("id") is not None and not norm.matches_id(d["id"]):
            raise StainError(f"stored stain normaliser's id {d.get('id')} does not match its parameters "
                             f"({norm.id}): edited?")
        return norm

    def _core(self, significant: int | None = None) -> dict[str, Any]:
        params = {k: v.tolist() for k, v in self.params.items()}
        if significant is not None:
            params = {k: _rounded(v, significant) for k, v in params.items()}
        return {"method": self.method, "params": params, "io": IO,
                "alpha": ALPHA, "beta": BETA, "min_tissue": self.min_tissue,
                # recorded where it differs from the first release's rule, so Macenko's ids stay the same
                **({"tissue_rule": TISSUE_RULES[self.method]} if self.method == "reinhard" else {})}

    def _digest(self, significant: int | None) -> str:
        digest = hashlib.sha256(json.dumps(self._core(significant), sort_keys=True).encode()).hexdigest()
        return f"{self.method}-{digest[:8]}"

    @property
    def id(self) -> str:
        """'<method>-<8 hex>': a digest of what determines the output (method, parameters to 4 significant digits,
        constants). Rounded because the same target fits to parameters that differ in the last bits on different
        CPUs (their eigensolvers round differently), and such a fit must keep the same id."""
        return self._digest(ID_SIGNIFICANT_DIGITS)

    def matches_id(self, stored: str | None) -> bool:
        """Whether `stored` is this normaliser's id: the current one, or the full-precision digest that gcmae
        recorded before ids were rounded (so features made then still match their own normaliser)."""
        return stored in (self.id, self._digest(None))

    def __repr__(self) -> str:
        return f"StainNormalizer({self.id}, target {self.target_name} sha256 {self.target_sha256[:12]}…)"

    # ------------------------------------------------------------------------------------------ applying
    def _engine(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self._engines:
            from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

            if self.method == "macenko":
                engine = TorchMacenkoNormalizer()
                engine.HERef, engine.maxCRef = (self.params[k].to(device) for k in ("HERef", "maxCRef"))
            else:  # torchstain's LAB conversion keeps its matrices on the CPU: Reinhard runs there
                engine = TorchReinhardNormalizer()
                engine.target_means, engine.target_stds = self.params["target_means"], self.params["target_stds"]
            self._engines[key] = engine
        return self._engines[key]

    def normalize_tile(self, image: torch.Tensor) -> torch.Tensor | None:
        """One (3, H, W) float [0, 255] tile normalised (float [0, 255], same device), or None when its stain
        cannot be estimated."""
        if tissue_fraction(image, rule=TISSUE_RULES[self.method]) < self.min_tissue:
            return None
        try:
            if self.method == "macenko":
                out, _, _ = self._engine(image.device).normalize(image, Io=IO, alpha=ALPHA, beta=BETA, stains=False)
                out = out.permute(2, 0, 1).float()  # torchstain returns (H, W, 3) int; NaN becomes INT_MIN
                bad = (out < 0).any()
            else:
                cpu = image.detach().cpu()
                # a flat tile has zero LAB spread: torchstain would divide by it (NaN cast silently to uint8)
                bad = bool(cpu.flatten(1).std(dim=1).max() < 0.5)
                out = self._engine(torch.device("cpu")).normalize(cpu).permute(2, 0, 1).float().to(image.device)
        except (RuntimeError, IndexError, ValueError):  # eigh / kthvalue / lstsq on degenerate pixels
            return None
        if bad or not torch.isfinite(out).all():
            return None
        return out

    def normalize(self, images: torch.Tensor) -> StainBatch:
        """(B, 3, H, W) uint8 [0, 255] or float [0, 1] -> the same, normalised; failed tiles unchanged."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"stain normalisation needs (B, 3, H, W) RGB batches, got {tuple(images.shape)}")
        is_uint8 = images.dtype == torch.uint8
        scaled = images.float() if is_uint8 else images.float().clamp(0, 1) * 255.0
        out = images.clone()
        failed = torch.zeros(images.shape[0], dtype=torch.bool)
        for i in range(images.shape[0]):
            tile = self.normalize_tile(scaled[i])
            if tile is None:
                failed[i] = True
            elif is_uint8:
                out[i] = tile.round().clamp(0, 255).to(torch.uint8)
            else:
                out[i] = (tile / 255.0).to(images.dtype)
        return StainBatch(out, failed)

    def normalize_encoder_input(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> StainBatch:
        """A batch normalised as ``(rgb - mean) / std`` (rgb in [0, 1]): undone, stain-normalised, redone; failed
        tiles are returned exactly as given."""
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        batch = self.normalize((x * s + m).clamp(0, 1))
        out = (batch.images - m) / s
        out[batch.failed.to(x.device)] = x[batch.failed.to(x.device)]
        return StainBatch(out, batch.failed)


@dataclass
class EncoderInputStain:
    """Stain-normalises encoder-input batches in an embedding loop and counts the tiles passed through."""

    normalizer: StainNormalizer
    mean: Sequence[float]
    std: Sequence[float]
    tiles: int = 0
    failed: int = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = self.normalizer.normalize_encoder_input(x, self.mean, self.std)
        self.tiles += int(x.shape[0])
        self.failed += batch.num_failed
        return batch.images


def make_normalizer(method: str | None, target: str | Path | None = None) -> StainNormalizer | None:
    """What `--stain-norm METHOD --stain-target PATH` ask for: None for 'none' (a target is then an error)."""
    if method in (None, "", "none"):
        if target:
            raise StainError(f"--stain-target {target} given without --stain-norm (choose {', '.join(METHODS)})")
        return None
    return StainNormalizer.fit(target or None, method)


def pretraining_normalizer(method: str, target: str | Path | None,
                           stored: dict[str, Any] | None) -> StainNormalizer | None:
    """The normaliser a pretraining applied, from what its weights record: the stored fit (`to_dict`) when there is
    one, else `make_normalizer(method, target)` (None for 'none', where a target is an error; None or "" as target:
    the shipped default). StainError when the stored fit is unusable or the target cannot be read."""
    if stored is not None and method not in (None, "", "none"):
        return StainNormalizer.from_dict(stored)
    return make_normalizer(method, target or None)


def recorded_stain_id(record: dict[str, Any]) -> str | None:
    """The id of the normaliser a feature file's attributes or a model's record stores, in this version's form
    (re-derived from the stored `stain` when there is one, so an id recorded before ids were rounded compares
    equal to a fresh one); the recorded `stain_id` as it is otherwise; None when there is neither."""
    stored = record.get("stain")
    if stored:
        try:
            return StainNormalizer.from_dict(stored).id
        except StainError:
            pass  # an unreadable record keeps its recorded id, which then mismatches and is reported
    return record.get("stain_id")
