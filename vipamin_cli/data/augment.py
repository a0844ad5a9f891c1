"""Training augmentation through the cache: V seeded random views per image, embedded once.

A cache of centre-cropped tokens cannot give FGVC's random crops and flips, so `embed --augment fgvc
--views V` also embeds V views of every image, each the VPT FGVC training transform (resize to a
square of ``img_size / 0.875`` = 256 for 224, random crop ``img_size``, horizontal flip with p 0.5).
The crop offsets and flips are drawn up front from a generator seeded by the embed seed and stored
with the tokens (``views.params``), so the views are reproducible whatever the DataLoader workers
do. `tune` then draws one view per image per epoch (see ``train.view_choice``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image

from vipamin_cli.errors import InputError

from .images import ImageSet, _to_rgb
from .transforms import _FGVC_CROP_RATIO, _INTERPOLATIONS

if TYPE_CHECKING:
    import torch

AUGMENTS = ("none", "fgvc", "auto")
DEFAULT_VIEWS = 8  # storage: (1 + V) x the centre-crop tokens; see docs/usage.md
_VIEW_SALT = 0x5EED_0F_A06  # keeps the view draws apart from the calibration draws of the same seed


def resolve_augment(augment: str, image_set: ImageSet) -> str:
    """``auto`` augments FGVC json sources (as the FGVC protocol trains) and nothing else."""
    if augment == "auto":
        return "fgvc" if image_set.kind == "fgvc" else "none"
    if augment in ("none", "fgvc"):
        return augment
    raise InputError(f"unknown --augment '{augment}'", f"use one of {', '.join(AUGMENTS)}")


def resize_side(img_size: int) -> int:
    """The square side the random crop is taken from (VPT: 256 for a 224 crop)."""
    return int(img_size / _FGVC_CROP_RATIO)


def view_params(n: int, views: int, img_size: int, seed: int) -> torch.Tensor:
    """(n, V, 3) int64: top, left and flip (0/1) of every view, from ``seed`` alone."""
    import torch

    gen = torch.Generator().manual_seed(int(seed) ^ _VIEW_SALT)
    room = resize_side(img_size) - img_size + 1
    offsets = torch.randint(room, (n, views, 2), generator=gen)
    flips = torch.randint(2, (n, views, 1), generator=gen)
    return torch.cat([offsets, flips], dim=2)


class ViewTransform:
    """One augmented view with given crop and flip: resize square, crop, flip, to tensor, normalise."""

    def __init__(self, img_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 interpolation: str = "bicubic") -> None:
        self.img_size = img_size
        self.side = resize_side(img_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation

    def view_image(self, img: Image.Image, top: int, left: int, flip: bool) -> Image.Image:
        """The geometric part only (what the tests compare pixel by pixel)."""
        if img.size != (self.side, self.side):
            img = img.resize((self.side, self.side), _INTERPOLATIONS[self.interpolation])
        img = img.crop((left, top, left + self.img_size, top + self.img_size))
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img

    def __call__(self, img: Image.Image, top: int, left: int, flip: bool) -> torch.Tensor:
        import numpy as np
        import torch

        if img.mode != "RGB":
            img = _to_rgb(img, "<image>")
        arr = np.asarray(self.view_image(img, top, left, flip), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (tensor - mean) / std


class TorchViews:
    """Map-style dataset over (image, view) pairs, image-major: yields (tensor, label, flat index)."""

    def __init__(self, image_set: ImageSet, transform: ViewTransform, params: torch.Tensor) -> None:
        self.image_set = image_set
        self.transform = transform
        self.params = params.tolist()  # plain lists pickle cheaply to workers
        self.views = int(params.shape[1])

    def __len__(self) -> int:
        return len(self.image_set) * self.views

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        index, view = divmod(i, self.views)
        top, left, flip = self.params[index][view]
        img = self.image_set.load_image(index)
        return self.transform(img, top, left, bool(flip)), self.image_set.samples[index].label, i


def augment_info(views: int, img_size: int, interpolation: str) -> dict[str, Any]:
    """JSON-able record of the augmentation (stored in the embeddings metadata)."""
    side = resize_side(img_size)
    return {"augment": "fgvc", "views": views, "resize": [side, side], "random_crop": img_size, "hflip": 0.5,
            "interpolation": interpolation,
            "steps": [f"resize to {side}x{side}", f"random crop {img_size}", "horizontal flip p 0.5",
                      "to tensor [0,1]", "normalize"],
            "draw": "tune picks one view per image per epoch from a generator seeded by (seed, epoch)"}
