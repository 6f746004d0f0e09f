"""Frozen encoders from any supported weights, as a plain timm ViT with its input normalisation.

``load_encoder`` reads any file ``gcmae.io.convert.load_weights`` reads (our checkpoints, official GCMAE/MAE
checkpoints, timm state dicts, `gcmae export` folders), the name of a shipped encoder (``gcmae.pretrained``), or
``"random"`` (a seeded random initialisation of an encoder preset, the baseline). Weights are loaded into the
encoder alone, without a decoder or memory bank; ``"random"`` builds a whole GCMAE once and keeps its encoder, so a
seed gives the same weights as pretraining's initialisation (``load_autoencoder`` builds the whole GCMAE, for
reconstructions).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from gcmae.config import PATHOLOGY_MEAN, PATHOLOGY_STD, PRETRAINED_STAIN
from gcmae.io.convert import (ImportedWeights, build_encoder_from_weights, build_gcmae_from_weights, load_weights,
                              pretrain_normalizer_record, pretrain_stain)
from gcmae.models.gcmae import GCMAE
from gcmae.models.vit import ENCODER_PRESETS
from gcmae.pretrained import available as available_pretrained
from gcmae.pretrained import resolve as resolve_pretrained
from gcmae.stain import DEFAULT_TARGET, EncoderInputStain, StainError, StainNormalizer, make_normalizer
from gcmae.stain.normalizer import pretraining_normalizer

log = logging.getLogger(__name__)

POOLS = ("cls", "mean")
RANDOM = "random"
_EVAL_BANK_SIZE = 2  # a GCMAE needs a memory bank; reconstructions never use it

Stats = tuple[float, float, float]


@dataclass
class Encoder:
    """A model to embed with, its input normalisation, and what identifies its weights (for cache keys)."""

    model: VisionTransformer  # the encoder alone: no decoder, no memory bank
    mean: Stats
    std: Stats
    img_size: int
    identity: dict[str, Any]
    description: str
    has_decoder: bool = True
    stain: StainNormalizer | None = None  # applied to every batch before the model
    # the stain normalisation its pretraining applied to every image (data.stain_norm, data.stain_target)
    pretrain_stain: tuple[str, str] = ("none", "")
    # that normaliser as fitted (StainNormalizer.to_dict), when the weights store it (checkpoints, exports)
    pretrain_normalizer_record: dict[str, Any] | None = None

    def pretraining_normalizer(self) -> StainNormalizer:
        """The stain normaliser its pretraining applied (what `--stain-norm pretrained` uses): the stored fit, else
        re-fitted to the recorded target. StainError when it was pretrained on raw images or the target is gone."""
        method, target = self.pretrain_stain
        if method == "none":
            raise StainError(f"{self.description} records no stain normalisation of its pretraining: "
                             "--stain-norm pretrained has nothing to apply (use none, macenko or reinhard)")
        try:
            normalizer = pretraining_normalizer(method, target, self.pretrain_normalizer_record)
        except StainError as err:
            if self.pretrain_normalizer_record is not None:
                raise StainError(f"{self.description}: the stain normaliser stored with it (an export's config.json "
                                 f"gcmae.stain, a checkpoint's hyper-parameters) is unusable: {err}") from None
            raise StainError(f"{self.description} records its pretraining's {method} target only by its path (an "
                             f"earlier gcmae), and it cannot be read here ({err}); pass --stain-norm {method} "
                             "--stain-target <a copy of that image>") from None
        assert normalizer is not None  # method is not "none"
        return normalizer

    def stain_mismatch(self, stain: StainNormalizer | None) -> str | None:
        """Why `stain` is not the normalisation this encoder was pretrained on (None when it is, or none was).
        A stored fit is compared by id; otherwise the target by file name (the recorded target is a path on the
        training machine)."""
        method, target = self.pretrain_stain
        if method == "none":
            return None
        expected = Path(target).name if target else DEFAULT_TARGET.name
        stored = self._stored_stain_id()
        if stored is not None and stain is not None and stain.matches_id(stored):
            return None
        if stored is None and stain is not None and stain.method == method and stain.target_name == expected:
            return None
        given = "raw images" if stain is None else f"{stain.method}-normalised ones (target {stain.target_name})"
        if stain is not None and stored is not None:
            given = given[:-1] + f", id {stain.id}; it was pretrained with {stored})"
        flags = f"--stain-norm {method}" + (f" --stain-target {target}" if target else "")
        return (f"{self.description} was pretrained on {method}-normalised images (target {expected}) but is "
                f"given {given}; for features like those it learnt from, pass --stain-norm pretrained (or {flags})")

    def _stored_stain_id(self) -> str | None:
        """The id of the stored pretraining normaliser, derived from its parameters; None when none is stored."""
        if self.pretrain_normalizer_record is None:
            return None
        try:
            return StainNormalizer.from_dict(self.pretrain_normalizer_record).id
        except StainError:
            return None  # reported when it is used (pretraining_normalizer)

    def use_stain(self, stain: StainNormalizer | None, warn: bool = True) -> None:
        """Normalise every batch with `stain` (None: none); warn when that is not how it was pretrained."""
        self.stain = stain
        problem = self.stain_mismatch(stain) if warn else None
        if problem:
            log.warning(problem)

    @property
    def transform_params(self) -> dict[str, Any]:
        """Everything the input pipeline depends on (part of the cache key): `eval_transform`, stain."""
        params = {"name": "resize_center_crop", "size": self.img_size, "interpolation": "bicubic",
                  "mean": list(self.mean), "std": list(self.std)}
        if self.stain is not None:
            params["stain"] = self.stain.to_dict()
        return params

    def stain_step(self) -> EncoderInputStain | None:
        """A per-run stain step for embedding loops (it counts the tiles passed through), or None."""
        return None if self.stain is None else EncoderInputStain(self.stain, self.mean, self.std)


def checked_normalizer(method: str | None, target: str | None) -> StainNormalizer | None:
    """`--stain-norm` / `--stain-target` checked before any model loads: the normaliser, or None for none and for
    'pretrained' (resolved by `apply_stain_option` once the encoder is loaded)."""
    if method == PRETRAINED_STAIN:
        if target:
            raise StainError(f"--stain-target {target} with --stain-norm {PRETRAINED_STAIN}: the encoder's own "
                             "normaliser is used; drop one of them")
        return None
    return make_normalizer(method, target or None)


def apply_stain_option(encoder: Encoder, method: str | None, stain: StainNormalizer | None) -> None:
    """Give `encoder` the normaliser `--stain-norm` asked for (`stain` from `checked_normalizer`)."""
    encoder.use_stain(encoder.pretraining_normalizer() if method == PRETRAINED_STAIN else stain)


# what in an export's config.json decides the features; its `gcmae` notes and the model card do not
EXPORT_IDENTITY_KEYS = ("architecture", "model_args", "pretrained_cfg")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content. For a `gcmae export` folder: of its weights and of the config.json entries that
    decide the features, so editing its model card or gcmae's notes keeps its identity (features, models trained on
    them and fine-tuning runs stay valid); for any other folder, of every file (relative name + content)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir() and (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path / 'config.json'}: not readable JSON ({err})") from None
        digest.update(json.dumps({k: config.get(k) for k in EXPORT_IDENTITY_KEYS}, sort_keys=True).encode() + b"\0")
        _hash_file(digest, path / "model.safetensors")
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        _hash_file(digest, f)
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)


def random_input_size(side: int, patch_size: int | None, source: str) -> int:
    """`--checkpoint random` without `--img-size`: the data's image side rounded to the nearest multiple of the
    patch size (at least one patch), with a log line naming where it came from."""
    patch = patch_size or 16
    size = max(patch, round(side / patch) * patch)
    log.info("--checkpoint %s without --img-size: %d px, from %s (%d px, rounded to a multiple of the patch size "
             "%d)", RANDOM, size, source, side, patch)
    return size


def _random_gcmae(encoder: str, img_size: int, patch_size: int, seed: int) -> GCMAE:
    """A seeded GCMAE at random init (eval mode). Its encoder is the random baseline: built inside the whole model
    so that its weights are the ones drawn from the same RNG stream as ever (the decoder's init draws in between)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GCMAE(num_data=_EVAL_BANK_SIZE, encoder=encoder, img_size=img_size, patch_size=patch_size).eval()


def _random_encoder(encoder: str | None, img_size: int | None, patch_size: int | None, seed: int) -> Encoder:
    if encoder is None:
        raise ValueError(f"--checkpoint {RANDOM} needs --encoder (one of {', '.join(ENCODER_PRESETS)})")
    img_size, patch_size = img_size or 224, patch_size or 16
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
    model = _random_gcmae(encoder, img_size, patch_size, seed).encoder
    # the init depends on the RNG stream, hence on torch's version
    identity = {"random": True, "encoder": encoder, "patch_size": patch_size, "seed": seed, "torch": torch.__version__}
    desc = f"random init {encoder}/{patch_size} at {img_size} px (seed {seed})"
    return Encoder(model.eval(), PATHOLOGY_MEAN, PATHOLOGY_STD, img_size, identity, desc)


def _architecture(weights: ImportedWeights) -> str:
    return f"{weights.encoder} ({weights.embed_dim} wide, {weights.depth} blocks, patch {weights.patch_size})"


def _read_weights(checkpoint: str | Path, encoder: str | None, patch_size: int | None) -> tuple[Path, ImportedWeights]:
    """(path, weights) of a checkpoint path or shipped encoder name; `encoder` / `patch_size` are expectations."""
    path = resolve_pretrained(checkpoint)  # a shipped encoder's name, e.g. "gcmae-vit-tiny-pcam", or a path
    if not path.exists():
        shipped = ", ".join(available_pretrained()) or "none"
        raise FileNotFoundError(f"checkpoint not found: {path} (nor the name of a shipped encoder: {shipped})")
    weights = load_weights(path)
    found = _architecture(weights)
    if encoder is not None and encoder != weights.encoder:
        want = ENCODER_PRESETS[encoder]
        raise ValueError(f"{path} holds a {found} encoder, but --encoder {encoder} expects "
                         f"{want['embed_dim']} wide with {want['depth']} blocks")
    if patch_size is not None and patch_size != weights.patch_size:
        raise ValueError(f"{path} holds a {found} encoder, but --patch-size {patch_size} was asked for")
    return path, weights


def load_encoder(
    checkpoint: str | Path, encoder: str | None = None, img_size: int | None = None, patch_size: int | None = None,
    seed: int = 0, sha256: str | None = None,
) -> Encoder:
    """The model of `checkpoint` (or a random init for "random"), in eval mode on the CPU.

    `sha256`: the checkpoint's digest when the caller already computed it (hashing a ViT-L file takes seconds).

    `encoder` / `patch_size`, when given, are expectations: a checkpoint with another architecture is an error.
    `img_size` defaults to the checkpoint's (position embeddings are interpolated for another size).
    """
    if encoder is not None and encoder not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODER_PRESETS)}")
    if str(checkpoint) == RANDOM:
        return _random_encoder(encoder, img_size, patch_size, seed)
    path, weights = _read_weights(checkpoint, encoder, patch_size)
    found = _architecture(weights)
    model = build_encoder_from_weights(weights, img_size)
    data = weights.config.get("data", {})
    mean = tuple(data.get("mean", PATHOLOGY_MEAN))
    std = tuple(data.get("std", PATHOLOGY_STD))
    size = img_size or weights.img_size
    identity = {"sha256": sha256 or file_digest(path), "patch_size": weights.patch_size}
    desc = f"{weights.kind} checkpoint {path} ({found}) at {size} px"
    return Encoder(model, mean, std, size, identity, desc, has_decoder=weights.decoder_state is not None,
                   pretrain_stain=pretrain_stain(weights) or ("none", ""),
                   pretrain_normalizer_record=pretrain_normalizer_record(weights))


def load_autoencoder(
    checkpoint: str | Path, encoder: str | None = None, img_size: int | None = None, patch_size: int | None = None,
    seed: int = 0,
) -> GCMAE:
    """The whole GCMAE of `checkpoint` (encoder and decoder; a fresh memory bank) in eval mode, for reconstructions;
    "random" gives the same seeded init as `load_encoder`. ValueError when the file has no decoder weights."""
    if str(checkpoint) == RANDOM:
        if encoder is None:
            raise ValueError(f"--checkpoint {RANDOM} needs --encoder (one of {', '.join(ENCODER_PRESETS)})")
        return _random_gcmae(encoder, img_size or 224, patch_size or 16, seed)
    path, weights = _read_weights(checkpoint, encoder, patch_size)
    if weights.decoder_state is None:
        raise ValueError(f"{path} has no decoder weights (encoder only): reconstructions need a GCMAE/MAE "
                         "checkpoint with its decoder")
    return build_gcmae_from_weights(weights, num_data=_EVAL_BANK_SIZE, img_size=img_size, load_bank=False)
