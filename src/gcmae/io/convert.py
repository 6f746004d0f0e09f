"""Import weights into GCMAE: official GCMAE checkpoints (`model` with MAE-ViT keys + `lemniscate.*` NPID bank),
official MAE checkpoints (`model`, encoder with or without decoder), timm ViT state dicts (`head.*` dropped; also
.safetensors and `gcmae export` folders) and our Lightning checkpoints (`state_dict` + `hyper_parameters.config`).

Files are read with `torch.load(..., weights_only=True)` (or safetensors): no pickled code is ever executed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from gcmae.config import PATHOLOGY_MEAN, PATHOLOGY_STD
from gcmae.io.checkpoints import CheckpointError
from gcmae.models.gcmae import GCMAE
from gcmae.models.vit import ENCODER_PRESETS, create_encoder
from gcmae.pretrained import resolve as resolve_pretrained

KINDS = ("gcmae_official", "mae_official", "timm", "gcmae")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_DECODER_HEADS = 16  # every official MAE / GCMAE model has a 16-head decoder
# official MAE / GCMAE name -> our MAEDecoder name (keys of GCMAE.decoder without the "decoder." prefix)
DECODER_RENAMES = (("decoder_embed.", "embed."), ("mask_token", "mask_token"), ("decoder_pos_embed", "pos_embed"),
                   ("decoder_blocks.", "blocks."), ("decoder_norm.", "norm."), ("decoder_pred.", "pred."))
_DROPPED = ("head.",)  # classifier heads of timm / fine-tuned models
# official argparse names -> (section, our config key)
_OFFICIAL_ARGS = {"input_size": ("model", "img_size"), "mask_ratio": ("model", "mask_ratio"),
                  "norm_pix_loss": ("model", "norm_pix_loss"), "nce_k": ("loss", "num_negatives"),
                  "nce_t": ("loss", "temperature"), "nce_m": ("loss", "bank_momentum"),
                  "data_path": ("data", "train_dir"), "batch_size": ("data", "batch_size"),
                  "epochs": ("optim", "epochs"),
                  "blr": ("optim", "base_lr"), "warmup_epochs": ("optim", "warmup_epochs"),
                  "weight_decay": ("optim", "weight_decay"), "accum_iter": ("optim", "accumulate_grad_batches")}
_GCMAE_ARGS = set(inspect.signature(GCMAE).parameters) - {"num_data"}
_POS_EMBEDS = ("encoder.pos_embed", "decoder.pos_embed")


class ConversionError(ValueError):
    """Weights that cannot be mapped onto a GCMAE model (unknown architecture, shapes or sizes that differ)."""


@dataclass
class ImportedWeights:
    """Weights of one file in our naming: timm encoder keys, MAEDecoder keys (no prefixes), the NPID bank."""

    kind: str  # one of KINDS
    source: Path
    encoder_state: dict[str, torch.Tensor]
    decoder_state: dict[str, torch.Tensor] | None
    bank_memory: torch.Tensor | None  # (N, D), one entry per training image
    bank_z: float | None  # NCE normaliser; None when not estimated yet
    encoder: str  # preset of ENCODER_PRESETS
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # PretrainConfig-shaped, as far as recorded
    num_data: int | None = None  # training images, when recorded


def read_weights_file(path: str | Path) -> dict[str, Any]:
    """The top-level dict of a torch file (weights_only; argparse args allowed) or a safetensors file/folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path}: a folder must hold model.safetensors (a `gcmae export` folder)")
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path}: truncated or not a safetensors file ({err})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # official runs save their argparse args
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it pickles Python objects beyond tensors and plain containers "
                f"({', '.join(found)}), which could run code; weights-only loading did not execute them") from None
        raise CheckpointError(f"cannot read {path}: truncated, corrupt or not a torch file ({err})") from None
    # random bytes reach the legacy (non-zip) unpickler, which fails with IndexError/KeyError/TypeError too
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read {path}: truncated, corrupt or not a torch file ({err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, got {type(obj).__name__}")
    return obj


def _tensors(state: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: {what} is not a dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _official_config(args: Any) -> dict[str, dict[str, Any]]:
    """Our config sections from the argparse args an official MAE / GCMAE run saved with its checkpoints."""
    values = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    config: dict[str, dict[str, Any]] = {}
    for name, (section, key) in _OFFICIAL_ARGS.items():
        value = values.get(name)
        if isinstance(value, (bool, int, float, str)) and value != " ":
            config.setdefault(section, {})[key] = value
    return config


_Tensors = dict[str, torch.Tensor]


def _split(state: _Tensors, ours: bool) -> tuple[_Tensors, _Tensors | None, torch.Tensor | None, torch.Tensor | None]:
    """(encoder, decoder or None, bank memory, bank z-or-params) from a flat state in our or the official naming."""
    enc: _Tensors = {}
    dec: _Tensors = {}
    memory = z = None
    for key, value in state.items():
        if ours:
            if key.startswith("encoder."):
                enc[key.removeprefix("encoder.")] = value
            elif key.startswith("decoder."):
                dec[key.removeprefix("decoder.")] = value
            elif key == "bank.memory":
                memory = value
            elif key == "bank.z":
                z = value
            continue
        if key == "lemniscate.memory":
            memory = value
        elif key == "lemniscate.params":
            z = value
        elif key.startswith(_DROPPED):
            continue
        else:
            new = next((ours_ + key[len(off):] for off, ours_ in DECODER_RENAMES if key.startswith(off)), None)
            if new is None:
                enc[key] = value
            else:
                dec[new] = value
    return enc, dec or None, memory, z


def _block_count(state: dict[str, torch.Tensor]) -> int:
    return len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})


def _infer_encoder(enc: dict[str, torch.Tensor], path: Path, preset: str | None) -> dict[str, Any]:
    needed = ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight")
    if any(k not in enc for k in needed):
        raise CheckpointError(f"{path}: no ViT encoder with a class token found (needs {', '.join(needed)}); "
                              f"keys start with {sorted(enc)[:6]}")
    if "reg_token" in enc:
        raise ConversionError(f"{path}: ViTs with register tokens are not supported")
    proj = enc["patch_embed.proj.weight"]
    embed_dim, patch = proj.shape[0], proj.shape[-1]
    depth = _block_count(enc)
    grid = math.isqrt(enc["pos_embed"].shape[1] - 1)
    if grid * grid != enc["pos_embed"].shape[1] - 1 or proj.shape[-2] != patch:
        raise ConversionError(f"{path}: only square patches and image grids are supported "
                              f"(patch_embed {tuple(proj.shape)}, pos_embed {tuple(enc['pos_embed'].shape)})")
    candidates = [preset] if preset else [n for n, p in ENCODER_PRESETS.items() if p["embed_dim"] == embed_dim]
    matching = [n for n in candidates if n in ENCODER_PRESETS and ENCODER_PRESETS[n]["embed_dim"] == embed_dim
                and ENCODER_PRESETS[n]["depth"] == depth]
    if not matching:
        known = ", ".join(f"{n} ({p['embed_dim']} wide, {p['depth']} blocks)" for n, p in ENCODER_PRESETS.items())
        raise ConversionError(f"{path}: encoder {embed_dim} wide with {depth} blocks matches no preset "
                              f"(the number of heads cannot be read from the weights); presets: {known}")
    name = matching[0]
    return dict(encoder=name, embed_dim=embed_dim, depth=depth, num_heads=ENCODER_PRESETS[name]["num_heads"],
                patch_size=patch, img_size=grid * patch)


def pretrain_stain(weights: ImportedWeights) -> tuple[str, str] | None:
    """(method, target) of the stain normalisation the weights were pretrained on (data.stain_norm), or None."""
    data = weights.config.get("data", {})
    method = str(data.get("stain_norm") or "none")
    return None if method == "none" else (method, str(data.get("stain_target") or ""))


def pretrain_normalizer_record(weights: ImportedWeights) -> dict[str, Any] | None:
    """The fitted stain normaliser (`StainNormalizer.to_dict`) of the normalisation its pretraining applied, as a
    checkpoint or a `gcmae export` stores it; None when not stored (checkpoints written before it was, which record
    only the method and the target's path)."""
    record = weights.config.get("data", {}).get("stain")
    return dict(record) if isinstance(record, dict) else None


def load_weights(path: str | Path) -> ImportedWeights:
    """Read any supported file (see module docstring) or a shipped encoder's name (`gcmae.pretrained`) and map it
    onto our names; the architecture is inferred."""
    path = resolve_pretrained(path)
    obj = read_weights_file(path)
    hparams = obj.get("hyper_parameters")
    config: dict[str, dict[str, Any]] = {}
    num_data = None
    if isinstance(obj.get("state_dict"), dict) and isinstance(hparams, dict) and "config" in hparams:
        kind, state, ours = "gcmae", _tensors(obj["state_dict"], path, "state_dict"), True
        state = {k.removeprefix("model."): v for k, v in state.items()}
        config, num_data = hparams["config"], hparams.get("num_data")
        if isinstance(hparams.get("stain"), dict):  # the fitted normaliser of data.stain_norm
            config = {**config, "data": {**config.get("data", {}), "stain": hparams["stain"]}}
    else:
        wrapped = "model" in obj
        state = _tensors(obj["model"] if wrapped else obj.get("state_dict", obj), path, "the weights")
        ours = any(k.startswith("encoder.") for k in state)
        if ours:
            kind = "gcmae"
        elif "lemniscate.memory" in state:
            kind = "gcmae_official"
        elif wrapped or "mask_token" in state or any(k.startswith("decoder_") for k in state):
            kind = "mae_official"
        else:
            kind = "timm"
        config = _official_config(obj.get("args")) if kind.endswith("official") else {}
        if kind.endswith("official"):
            mean, std = (PATHOLOGY_MEAN, PATHOLOGY_STD) if kind == "gcmae_official" else (IMAGENET_MEAN, IMAGENET_STD)
            config.setdefault("data", {}).update(mean=list(mean), std=list(std))
        if path.is_dir() and (path / "config.json").is_file():  # a `gcmae export` folder
            exported = json.loads((path / "config.json").read_text())
            pretrained = exported.get("pretrained_cfg", {})
            config["data"] = {k: pretrained[k] for k in ("mean", "std") if k in pretrained}
            config["data"].update(exported.get("gcmae", {}))  # its pretraining's stain_norm / stain_target / stain
    enc, dec, memory, z = _split(state, ours)
    arch = _infer_encoder(enc, path, config.get("model", {}).get("encoder") if kind == "gcmae" else None)
    bank_z = None
    if z is not None:
        z_value = float(z.reshape(-1)[2] if z.numel() == 4 else z.reshape(-1)[0])  # official params: [K, T, Z, m]
        bank_z = z_value if z_value >= 0 else None
        if z.numel() == 4:
            k, t, _, m = (float(v) for v in z.reshape(-1))
            config.setdefault("loss", {}).update(num_negatives=int(k), temperature=t, bank_momentum=m)
    if memory is not None:
        num_data = num_data or memory.shape[0]
    model = config.setdefault("model", {})
    model.update(encoder=arch["encoder"], patch_size=arch["patch_size"], img_size=arch["img_size"])
    decoder = {}
    if dec is not None:
        if "embed.weight" not in dec:
            raise CheckpointError(f"{path}: decoder weights without decoder_embed / decoder.embed")
        decoder = dict(decoder_dim=dec["embed.weight"].shape[0], decoder_depth=_block_count(dec))
        model.update(decoder)
        if kind != "gcmae" and decoder["decoder_dim"] % OFFICIAL_DECODER_HEADS == 0:
            model.setdefault("decoder_heads", OFFICIAL_DECODER_HEADS)
    return ImportedWeights(kind, path, enc, dec, memory, bank_z, **arch, **decoder, config=config, num_data=num_data)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path, patch_size: int) -> None:
    """Load `state` into `model`; position embeddings are resampled when only the image size differs."""
    target = model.state_dict()
    unexpected = sorted(set(state) - set(target))
    resize = [k for k in _POS_EMBEDS if k in state and state[k].shape != target[k].shape
              and state[k].shape[-1] == target[k].shape[-1]]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape and k not in resize]
    if wrong or unexpected:
        lines = [f"  {k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in wrong + resize]
        lines += [f"  {k}: not in the model" for k in unexpected]
        more = f"\n  ... and {len(lines) - 30} more" if len(lines) > 30 else ""
        raise ConversionError(f"{source}: weights do not fit the requested model (patch size or width differ?):\n"
                              + "\n".join(lines[:30]) + more)
    for key in resize:
        old, new = (math.isqrt(t.shape[1] - 1) for t in (state[key], target[key]))
        state[key] = resample_abs_pos_embed(state[key], [new, new], [old, old], num_prefix_tokens=1)
    if resize:
        warnings.warn(f"{source}: image size changed ({old * patch_size} -> {new * patch_size} px): "
                      f"interpolated {', '.join(resize)} from a {old}x{old} to a {new}x{new} patch grid", stacklevel=3)
    missing = [k for k in target if k not in state and k.split(".")[0] in {p.split(".")[0] for p in state}]
    if missing:
        raise ConversionError(f"{source}: incomplete weights, missing {', '.join(missing[:10])}")
    model.load_state_dict(state, strict=False)


def build_gcmae_from_weights(
    weights: ImportedWeights, num_data: int | None = None, img_size: int | None = None, load_bank: bool = True,
    **overrides: Any,
) -> GCMAE:
    """A GCMAE model (eval mode) with everything the file holds loaded; the rest is freshly initialised.

    Settings come from the file (our config, or the official args and NCE params), then `overrides` (any GCMAE
    argument). The bank and Z come along so pretraining can continue on the same `num_data` images; pass
    `load_bank=False` to start a fresh bank for another dataset. A new `img_size` interpolates position embeddings.
    """
    unknown = sorted(set(overrides) - _GCMAE_ARGS)
    if unknown:
        raise ConversionError(f"unknown GCMAE argument(s) {', '.join(unknown)}; "
                              f"accepted: {', '.join(sorted(_GCMAE_ARGS))}")
    kwargs = {k: v for s in ("model", "loss") for k, v in weights.config.get(s, {}).items() if k in _GCMAE_ARGS}
    kwargs.update(img_size=img_size or weights.img_size, **overrides)
    if weights.decoder_state is not None and "decoder_heads" not in kwargs:
        raise ConversionError(f"{weights.source}: the number of decoder heads cannot be read from the weights "
                              f"(decoder {weights.decoder_dim} wide): pass decoder_heads=")
    if kwargs["img_size"] % kwargs.get("patch_size", weights.patch_size):
        raise ConversionError(f"img_size {kwargs['img_size']} is not a multiple of the patch size")
    bank = weights.bank_memory if load_bank else None
    if bank is not None:
        if num_data is not None and num_data != bank.shape[0]:
            raise ConversionError(
                f"{weights.source}: its memory bank has {bank.shape[0]} entries (one per training image) but "
                f"num_data={num_data}; continue on the same images, or pass load_bank=False to start a fresh bank")
        num_data = bank.shape[0]
    elif num_data is None:
        raise ConversionError(f"{weights.source}: no memory bank to load; "
                              "pass num_data (the number of training images)")
    model = GCMAE(num_data=num_data, **kwargs)
    state = {f"encoder.{k}": v for k, v in weights.encoder_state.items()}
    state.update({f"decoder.{k}": v for k, v in (weights.decoder_state or {}).items()})
    if bank is not None:
        z = weights.bank_z if weights.bank_z is not None else -1.0
        state.update({"bank.memory": bank, "bank.z": torch.tensor(z, dtype=model.bank.z.dtype)})
    _load_into(model, state, weights.source, model.patch_size)
    return model.eval()


def build_encoder_from_weights(weights: ImportedWeights, img_size: int | None = None) -> VisionTransformer:
    """The encoder alone (timm ViT, eval mode) with the file's encoder weights: no decoder, no memory bank.
    A new `img_size` interpolates the position embeddings."""
    size = img_size or weights.img_size
    if size % weights.patch_size:
        raise ConversionError(f"img_size {size} is not a multiple of the patch size")
    holder = nn.ModuleDict({"encoder": create_encoder(weights.encoder, size, weights.patch_size)})
    _load_into(holder, {f"encoder.{k}": v for k, v in weights.encoder_state.items()}, weights.source,
               weights.patch_size)
    return holder["encoder"].eval()
