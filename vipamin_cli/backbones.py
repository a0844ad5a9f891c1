"""Backbone registry: short names -> timm architectures, pretrained tags and recipe defaults.

Like timm's own registry, a backbone is built by name; one function (:func:`adapt_state_dict`)
turns foreign checkpoints (MAE ``model``, MoCo-v3 ``state_dict`` with ``module.`` prefixes, plain
safetensors) into the timm layout. torch and timm are imported lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import torch
    from timm.models.vision_transformer import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# MNIST's usual normalisation constants (mean / std of its 28 x 28 training pixels)
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)
# The architecture of the project's own MAE backbone (vipamin_cli/testbed/mae.py): MNIST padded
# to 32 px, patch 4 -> an 8 x 8 grid, width 128, depth 6 (1.2M parameters).
MNIST_VIT_KWARGS: dict[str, Any] = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                                        mlp_ratio=4.0, qkv_bias=True)

# sha256 of the shipped weights file. `make testbed-backbone` retrains it from the seed; on other CPU
# kernels the float rounding differs, so a re-run matches its quality, not its bytes (docs/backbones.md)
MAE_MNIST_SHA256 = "7ea4329b3baeebe6e26494ddb65cfe45dfff219fa5e711bdd7b5f05aac57d237"

POOLS = ("cls", "mean-all", "mean-patch", "mean-all-norm", "timm", "timm-all")
# cls: final norm, CLS row. mean-patch: final norm, mean of patch rows. mean-all: mean of prompts +
# patches, fresh affine-free LayerNorm (VPT's MAE recipe). mean-all-norm: the same mean, then the
# backbone's pretrained final norm with its affine (SPT's MAE head). timm / timm-all: timm's own
# head input (final norm, then its global pool: token, avg + fc_norm, or attention pooling 'map'),
# with the prompt rows removed first (timm) or kept (timm-all).
WEIGHTS_FIX = "pass --weights PATH to a local checkpoint (.safetensors, .pth or .pth.tar)"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone and to apply its paper recipe."""

    name: str
    arch: str  # timm architecture name
    hub_tag: str | None  # timm pretrained tag (arch.tag) or None when no hub copy exists
    family: str  # mae | moco-v3 | dino | dinov2 | supervised | test | timm
    pool: str  # default head input, see POOLS
    width: int
    depth: int
    heads: int
    patch: int
    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    requires_weights: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    builtin: tuple[str, str] | None = None  # (file in vipamin_cli/testbed/weights, its sha256)

    @property
    def source(self) -> str:
        if self.family == "test":
            return "built-in (seeded)"
        if self.builtin is not None:
            return "built-in (shipped weights)"
        if self.hub_tag is None:
            return "local file (--weights)"
        return f"hub: {self.hub_tag}"


def _spec(name: str, arch: str, tag: str | None, family: str, pool: str, width: int, depth: int, heads: int,
          patch: int, img_size: int = 224, **kw: Any) -> BackboneSpec:
    return BackboneSpec(name=name, arch=arch, hub_tag=tag, family=family, pool=pool, width=width, depth=depth,
                        heads=heads, patch=patch, img_size=img_size, **kw)


_TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True)

REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in [
    _spec("mae-vit-b", "vit_base_patch16_224", "vit_base_patch16_224.mae", "mae", "mean-all", 768, 12, 12, 16,
          description="MAE ViT-B/16 (He et al. 2022), ImageNet-1k self-supervised"),
    _spec("mae-vit-l", "vit_large_patch16_224", "vit_large_patch16_224.mae", "mae", "mean-all", 1024, 24, 16, 16,
          description="MAE ViT-L/16"),
    _spec("mae-vit-h", "vit_huge_patch14_224", "vit_huge_patch14_224.mae", "mae", "mean-all", 1280, 32, 16, 14,
          description="MAE ViT-H/14"),
    _spec("moco-v3-vit-b", "vit_base_patch16_224", None, "moco-v3", "cls", 768, 12, 12, 16, requires_weights=True,
          description="MoCo-v3 ViT-B/16 (no hub copy: linear-vit-b-300ep.pth.tar or the pretraining file)"),
    _spec("dino-vit-b", "vit_base_patch16_224", "vit_base_patch16_224.dino", "dino", "cls", 768, 12, 12, 16,
          description="DINO ViT-B/16"),
    _spec("dino-vit-s", "vit_small_patch16_224", "vit_small_patch16_224.dino", "dino", "cls", 384, 12, 6, 16,
          description="DINO ViT-S/16"),
    _spec("dinov2-vit-b", "vit_base_patch14_dinov2", "vit_base_patch14_dinov2.lvd142m", "dinov2", "cls",
          768, 12, 12, 14, model_kwargs={"img_size": 224},
          description="DINOv2 ViT-B/14 at 224 px (position embedding resampled from 518)"),
    _spec("dinov2-vit-b-reg", "vit_base_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", "dinov2",
          "cls", 768, 12, 12, 14, model_kwargs={"img_size": 224},
          description="DINOv2 ViT-B/14 with 4 register tokens, at 224 px"),
    _spec("sup-vit-b-in21k", "vit_base_patch16_224", "vit_base_patch16_224.orig_in21k", "supervised", "cls",
          768, 12, 12, 16, mean=INCEPTION_MEAN, std=INCEPTION_STD,
          description="supervised ImageNet-21k ViT-B/16 (the VPT backbone)"),
    _spec("mae-vit-tiny-mnist", "vit_mae_tiny_mnist", None, "mae", "mean-all", 128, 6, 4, 4, img_size=32,
          mean=MNIST_MEAN, std=MNIST_STD, model_kwargs=dict(MNIST_VIT_KWARGS),
          builtin=("mae-vit-tiny-mnist.safetensors", MAE_MNIST_SHA256),
          description="MAE ViT (patch 4, width 128, depth 6) pretrained by the project on MNIST's 60k training "
                      "images (make testbed-backbone)"),
    _spec("vit-tiny-test", "vit_tiny_test", None, "test", "cls", 64, 4, 4, 8, img_size=32,
          model_kwargs=dict(_TINY), description="tiny seeded ViT for tests and the offline demo"),
    _spec("vit-tiny-reg-test", "vit_tiny_reg_test", None, "test", "cls", 64, 4, 4, 8, img_size=32,
          model_kwargs=dict(_TINY, reg_tokens=2, no_embed_class=True),
          description="tiny seeded ViT with 2 register tokens (DINOv2-reg layout)"),
]}

TINY_SEED = 0
BUILTIN_WEIGHTS_DIR = Path(__file__).parent / "testbed" / "weights"


def list_backbones() -> list[BackboneSpec]:
    return list(REGISTRY.values())


def resolve_spec(name: str) -> BackboneSpec:
    """Look a backbone up by short name, or describe any timm ViT given as ``timm:<name>``."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm:"):
        return _timm_spec(name)
    raise InputError(f"unknown backbone '{name}'",
                     f"use one of {', '.join(REGISTRY)} or timm:<vit name> (see `vipamin backbones`)")


def _timm_spec(name: str) -> BackboneSpec:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    tag = name[len("timm:"):]
    arch = tag.split(".")[0]
    if not timm.is_model(arch):
        raise InputError(f"unknown timm model '{tag}'", "check the name with timm.list_models('vit_*')")
    model = timm.create_model(tag, pretrained=False, num_classes=0)
    if not isinstance(model, VisionTransformer):
        raise InputError(f"timm model '{tag}' is a {type(model).__name__}, not a VisionTransformer",
                         "choose a plain ViT (timm.list_models('vit_*'))")
    cfg = model.pretrained_cfg or {}
    has_tag = bool(cfg.get("hf_hub_id") or cfg.get("url"))
    return BackboneSpec(
        name=name, arch=arch, hub_tag=tag if has_tag else None, family="timm",
        pool="cls" if model.global_pool == "token" else "timm",
        width=model.embed_dim, depth=len(model.blocks), heads=model.blocks[0].attn.num_heads,
        patch=model.patch_embed.patch_size[0], img_size=model.patch_embed.img_size[0],
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"), description="timm model")


@dataclass
class Backbone:
    """A built, frozen backbone and the identity that artifacts record."""

    spec: BackboneSpec
    model: VisionTransformer
    weights_source: str  # "hub:<tag>", "file:<abs path>" or "seeded:<seed>"
    fingerprint: str

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        g = self.grid
        return g[0] * g[1]

    @property
    def img_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    def identity(self) -> dict[str, Any]:
        """What a later command compares to refuse mismatched artifacts."""
        import timm

        m = self.model
        return {
            "name": self.spec.name, "arch": self.spec.arch, "family": self.spec.family,
            "weights_source": self.weights_source, "weights_fingerprint": self.fingerprint,
            "width": int(m.embed_dim), "depth": len(m.blocks), "heads": int(m.blocks[0].attn.num_heads),
            "patch": int(m.patch_embed.patch_size[0]), "img_size": self.img_size,
            "num_prefix_tokens": self.num_prefix_tokens, "num_patches": self.num_patches,
            "pool": self.spec.pool, "timm_version": timm.__version__,
        }


def _build_arch(spec: BackboneSpec, img_size: int | None) -> VisionTransformer:
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(spec.model_kwargs)
    if img_size:
        kwargs["img_size"] = img_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        if spec.arch.endswith("_test"):
            return _random_feature_init(VisionTransformer(num_classes=0, **kwargs))
        if spec.builtin is not None:
            return VisionTransformer(num_classes=0, **kwargs)
        return timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)


def _random_feature_init(model: VisionTransformer) -> VisionTransformer:
    """Unit-scale seeded weights for the built-in test backbones.

    timm's init (std 0.02) makes an untrained ViT nearly blind to position: tiny position
    embeddings and uniform attention reduce it to a bag of patches. Drawing position / prefix
    embeddings at unit scale and block weights at 1/sqrt(fan_in) gives a random-feature ViT that
    keeps spatial layout, so the offline demo and tests learn something real.
    """
    import torch

    gen = torch.Generator().manual_seed(TINY_SEED)
    with torch.no_grad():
        for name in ("pos_embed", "cls_token", "reg_token"):
            p = getattr(model, name, None)
            if p is not None:
                p.normal_(0.0, 1.0, generator=gen)
        for p in model.blocks.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (see :mod:`checkpoints`), without ever unpickling arbitrary objects."""
    from .checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.kind != "state_dict":
        raise InputError(f"weights file {path} is a JAX .npz; it has no state dict to read",
                         "load it into a backbone with load_weights_file (or --weights)")
    return ckpt.tensors


_PREFIXES = ("module.base_encoder.", "module.backbone.", "module.encoder.", "module.", "base_encoder.", "encoder.",
             "backbone.")
# Weights a feature extractor does not use: heads, projectors, predictors, decoders, momentum encoders.
# DINOv2's mask_token stays until timm's filter, which recognises DINOv2 files by it.
_DROP = ("head.", "fc_norm.", "predictor.", "decoder", "module.predictor.", "module.momentum_encoder.",
         "momentum_encoder.")
_UNUSED_AFTER_FILTER = ("mask_token",)  # masked-image-modelling token: not part of the forward pass


def adapt_state_dict(checkpoint: Any, model: VisionTransformer, path: str | os.PathLike = "",
                     name: str = "") -> dict[str, torch.Tensor]:
    """Bring a foreign ViT checkpoint into the layout of ``model`` (a timm VisionTransformer).

    The one place foreign layouts are adapted, as timm's ``_builder`` does: a JAX ``.npz``
    (:class:`checkpoints.Checkpoint` of kind ``jax-npz``) goes through timm's npz loader; a state
    dict has MoCo-v3 (``module.base_encoder.``), DINO (``backbone.``, ``module.backbone.``), DDP
    (``module.``) and similar prefixes stripped and classifier / projector / decoder weights dropped,
    then runs timm's ``checkpoint_filter_fn``, which converts DINOv2 (with or without registers),
    CLIP and other layouts and resamples position embeddings to the model's grid. A patch size other
    than the model's is refused before timm would resample the patch kernel (``path`` and ``name``
    name the file and backbone in that message).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    from .checkpoints import Checkpoint

    if isinstance(checkpoint, Checkpoint) and checkpoint.kind == "jax-npz":
        return _from_jax_npz(checkpoint, model, name)
    state_dict = checkpoint.tensors if isinstance(checkpoint, Checkpoint) else checkpoint
    keys = list(state_dict)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "blocks.") or k.startswith(prefix + "patch_embed.") for k in keys):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_DROP)}
    kernel = state_dict.get("patch_embed.proj.weight")
    if kernel is not None and kernel.dim() == 4:
        _check_patch(tuple(kernel.shape[-2:]), model, path, name)
    _check_registers(state_dict, model, path, name)
    try:
        out = checkpoint_filter_fn(state_dict, model)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:  # a layout timm cannot map onto this model
        from .checkpoints import first_sentence

        raise InputError(f"weights file {path} does not fit backbone '{name}': timm cannot convert it "
                         f"({first_sentence(str(exc)) or type(exc).__name__})",
                         "pass the checkpoint of this architecture or pick the matching --backbone") from None
    return {k: v for k, v in out.items() if not k.startswith(_UNUSED_AFTER_FILTER)}


def _check_registers(state_dict: dict[str, Any], model: VisionTransformer, path: str | os.PathLike,
                     name: str) -> None:
    """Register tokens in the file but not the model (or the reverse) change the network, and timm's
    conversion of the position table would fail on them: refuse before it runs."""
    tokens = state_dict.get("register_tokens", state_dict.get("reg_token"))
    has = 0 if tokens is None else int(tokens.shape[1])
    want = int(getattr(model, "num_reg_tokens", 0) or 0)
    if has and not want:
        raise InputError(f"weights file {path} does not fit backbone '{name}': it holds {has} register tokens "
                         "(a DINOv2-with-registers checkpoint) that the backbone lacks; dropping them would change "
                         "the network", _REGISTER_FIX)
    if want and not has:
        raise InputError(f"weights file {path} does not fit backbone '{name}': the backbone has {want} register "
                         "tokens but the file has none", _NO_REGISTER_FIX)


def _check_patch(patch: tuple[int, ...], model: VisionTransformer, path: str | os.PathLike, name: str) -> None:
    """timm would resample a patch kernel of another size silently: a different network, so refuse."""
    want = tuple(model.patch_embed.proj.weight.shape[-2:])
    if patch != want:
        raise InputError(f"weights file {path} has {patch[0]}x{patch[1]} patches but backbone '{name}' uses "
                         f"{want[0]}x{want[1]}; resampling the patch kernel would change the network",
                         f"pick a backbone with patch {patch[0]} (see `vipamin backbones`, or timm:<name>)")


def _from_jax_npz(checkpoint: Any, model: VisionTransformer, name: str) -> dict[str, torch.Tensor]:
    """A Google ViT ``.npz`` (VPT's ImageNet-21k file) through timm's own npz loader, into a scratch
    copy of ``model``; weights the file lacks stay NaN and are reported missing by the caller."""
    import copy

    import numpy as np
    import torch
    from timm.models.vision_transformer import _load_weights

    from .checkpoints import JAX_KERNELS

    path, files = checkpoint.path, checkpoint.npz_files
    prefix = next(k for k in JAX_KERNELS if k in files)[: -len("embedding/kernel")]
    with np.load(path, allow_pickle=False) as npz:
        _check_patch(tuple(npz[prefix + "embedding/kernel"].shape[:2]), model, path, name)
        block_re = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
        blocks = {int(m.group(1)) for f in files if (m := block_re.match(f))}
        stacked = prefix + "Transformer/encoderblock/LayerNorm_0/scale"
        depth = len(blocks) if blocks else int(npz[stacked].shape[0]) if stacked in files else 0
    if depth != len(model.blocks):
        raise InputError(f"weights file {path} has {depth} transformer blocks but backbone '{name}' has "
                         f"{len(model.blocks)}", "pick the backbone of this checkpoint's depth")
    scratch = copy.deepcopy(model)
    with torch.no_grad():
        for t in scratch.state_dict().values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    try:
        _load_weights(scratch, str(path), prefix)
    except KeyError as exc:
        raise InputError(f"weights file {path} does not fit backbone '{name}': the npz lacks {exc.args[0]}",
                         "pass the checkpoint of this architecture or pick the matching --backbone") from None
    except (RuntimeError, ValueError) as exc:
        from .checkpoints import first_sentence

        raise InputError(f"weights file {path} does not fit backbone '{name}': {first_sentence(str(exc))}",
                         "pass the checkpoint of this architecture or pick the matching --backbone") from None
    return {k: v for k, v in scratch.state_dict().items() if not (v.is_floating_point() and torch.isnan(v).any())}


# What an unexpected or missing key means, and the fix the refusal suggests.
_REGISTER_FIX = "pick a backbone with registers, e.g. dinov2-vit-b-reg or timm:vit_base_patch14_reg4_dinov2"
_NO_REGISTER_FIX = "the file has no register tokens: pick a backbone without them, e.g. dinov2-vit-b"
_KEY_HINTS = (("reg_token", "register tokens", _REGISTER_FIX),
              (".ls1.gamma", "layer-scale gammas of a DINOv2 / DeiT-III / CaiT network",
               "pick that family's backbone, e.g. dinov2-vit-b (see `vipamin backbones`)"))


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_weights_file(model: VisionTransformer, path: str | os.PathLike, name: str) -> None:
    """Load a local checkpoint into ``model``; refuse one made for another network: unexpected weights
    (they would be dropped, changing the network), another patch size, other shapes, missing weights."""
    from .checkpoints import read_checkpoint
    from .ui import escape, info

    checkpoint = read_checkpoint(path)
    if checkpoint.note:
        info(escape(checkpoint.note))
    sd = adapt_state_dict(checkpoint, model, path, name)
    own = model.state_dict()
    fix = "pass the checkpoint of this architecture or pick the matching --backbone"
    extra = [k for k in sd if k not in own]
    if extra:
        what, hint = next(((f": {w}", h) for pattern, w, h in _KEY_HINTS if any(pattern in k for k in extra)),
                          ("", fix))
        raise InputError(f"weights file {path} does not fit backbone '{name}': it has weights the backbone lacks "
                         f"({_shown(extra)}{what}); dropping them would change the network", hint)
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise InputError(
                f"weights file {path} does not fit backbone '{name}': {k} has shape {tuple(v.shape)}, "
                f"expected {tuple(own[k].shape)}", fix)
    missing = [k for k in own if k not in sd]
    if missing:
        hint = _NO_REGISTER_FIX if "reg_token" in missing else fix
        raise InputError(f"weights file {path} does not fit backbone '{name}': missing {_shown(missing)}", hint)
    model.load_state_dict(sd, strict=True)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick probe, so that an offline machine fails in seconds rather than after long retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(spec: BackboneSpec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        return False
    cfg = get_pretrained_cfg(spec.hub_tag)
    if cfg is None or not cfg.hf_hub_id:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(hit, str):
            return True
    return False


def _load_hub(spec: BackboneSpec, img_size: int | None) -> VisionTransformer:
    import timm

    cached = _hub_cached(spec)
    if not cached and not _hub_reachable():
        raise InputError(f"cannot download weights for backbone '{spec.name}' ({spec.hub_tag}): no network",
                         WEIGHTS_FIX)
    kwargs = dict(spec.model_kwargs)
    if img_size:
        kwargs["img_size"] = img_size
    prev = os.environ.get("HF_HUB_OFFLINE")
    if cached:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return timm.create_model(spec.hub_tag, pretrained=True, num_classes=0, **kwargs)
    except Exception as exc:
        raise InputError(f"cannot load weights for backbone '{spec.name}' ({spec.hub_tag}): "
                         f"{str(exc).splitlines()[0][:200]}", WEIGHTS_FIX) from None
    finally:
        if cached:
            if prev is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = prev


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer, so any changed weight changes the cache key."""
    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def load_backbone(name: str, weights: str | os.PathLike | None = None, img_size: int | None = None) -> Backbone:
    """Build ``name`` frozen and in eval mode, with hub, local-file or seeded weights."""
    spec = resolve_spec(name)
    if weights is not None and str(weights) == "random":  # seeded random weights: timing and tests only
        model = _build_arch(spec, img_size)
        source = f"seeded:{TINY_SEED}"
    elif weights is not None:
        model = _build_arch(spec, img_size)
        load_weights_file(model, weights, spec.name)
        source = f"file:{Path(weights).resolve()}"
    elif spec.family == "test":
        model = _build_arch(spec, img_size)
        source = f"seeded:{TINY_SEED}"
    elif spec.builtin is not None:
        model = _build_arch(spec, img_size)
        path = builtin_weights_path(spec)
        load_weights_file(model, path, spec.name)
        source = f"builtin:{spec.builtin[0]}"
    elif spec.hub_tag is None:
        raise InputError(f"backbone '{spec.name}' has no hub copy and needs local weights", WEIGHTS_FIX)
    else:
        model = _load_hub(spec, img_size)
        source = f"hub:{spec.hub_tag}"
    model.eval()
    model.requires_grad_(False)
    return Backbone(spec=spec, model=model, weights_source=source, fingerprint=weights_fingerprint(model))


def builtin_weights_path(spec: BackboneSpec) -> Path:
    """The shipped weights of a built-in backbone, refused unless their sha256 is the recorded one."""
    assert spec.builtin is not None
    fname, want = spec.builtin
    path = BUILTIN_WEIGHTS_DIR / fname
    fix = "reinstall vipamin, or rebuild the file with `make testbed-backbone`"
    if not path.is_file():
        raise InputError(f"the weights of built-in backbone '{spec.name}' are missing: {path}", fix)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise InputError(f"the weights of built-in backbone '{spec.name}' ({path}) have sha256 {got[:16]}..., "
                         f"expected {want[:16]}...", fix)
    return path


def recorded_weights(identity: dict[str, Any]) -> str | None:
    """The ``--weights`` value that rebuilds the weights an artifact records: its local file, 'random'
    for seeded weights of a non-test backbone, or None (hub, built-in and test backbones need none)."""
    source = str(identity.get("weights_source", ""))
    if source.startswith("file:"):
        return source[len("file:"):]
    if source.startswith("seeded:") and identity.get("family") != "test":
        return "random"
    return None


def load_backbone_from_identity(identity: dict[str, Any], backbone: str | None = None,
                                weights: str | os.PathLike | None = None, what: str = "the artifact") -> Backbone:
    """Rebuild the backbone an artifact (``what``) was made with, and check it is bit-for-bit the same.

    The one place every command that reads an artifact gets its backbone: the name and weights come
    from the artifact's metadata unless ``backbone`` / ``weights`` (the user's --backbone / --weights)
    are given; a recorded local weights file that is gone or changed is named with the option to pass.
    """
    name = identity["name"]
    if backbone is not None and backbone != name:
        raise InputError(f"{what} was made with backbone '{name}', not '{backbone}'",
                         f"drop --backbone (the recorded one is used) or pass --backbone {name}")
    source = str(identity.get("weights_source", ""))
    recorded = recorded_weights(identity)
    fingerprint = str(identity.get("weights_fingerprint"))[:8]
    if weights is None and source.startswith("file:") and not Path(recorded).is_file():
        raise InputError(f"the backbone weights file {recorded} recorded in {what} is gone",
                         f"pass --weights PATH to a copy of it (weights fingerprint {fingerprint})")
    try:
        loaded = load_backbone(name, weights=weights if weights is not None else recorded,
                               img_size=identity.get("img_size"))
    except InputError as exc:
        if weights is not None or not source.startswith("file:"):
            raise
        raise InputError(f"the backbone weights file {recorded} recorded in {what} changed and cannot be loaded "
                         f"({exc.message})", "pass --weights PATH to the original weights") from None
    if loaded.fingerprint == identity.get("weights_fingerprint"):
        return loaded
    if weights is not None:
        raise InputError(f"--weights {weights} are not the weights {what} was made with ({source}, fingerprint "
                         f"{fingerprint}, got {loaded.fingerprint[:8]})",
                         "pass --weights with the same weights file, or drop it to use the recorded one")
    if source.startswith("file:"):
        raise InputError(f"the backbone weights file {recorded} recorded in {what} changed since it was made "
                         f"(fingerprint {loaded.fingerprint[:8]}, recorded {fingerprint})",
                         "pass --weights PATH to the original weights, or re-run `vipamin embed` with the new ones")
    raise InputError(f"the weights of backbone '{name}' ({source}) changed since {what} was made",
                     "pass --weights PATH to the original weights, or re-run `vipamin embed` with the current ones")
