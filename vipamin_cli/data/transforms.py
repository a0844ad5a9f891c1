"""Preprocessing: the VTAB squash and the FGVC resize + centre crop, and the DataLoader dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from vipamin_cli.errors import InputError

from .images import ImageSet, _to_rgb

if TYPE_CHECKING:
    import torch

_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_FGVC_CROP_RATIO = 0.875


def resolve_resize(resize: str, image_set: ImageSet) -> str:
    """``auto`` follows the benchmark: FGVC uses resize+centre-crop, everything else the VTAB squash."""
    if resize == "auto":
        return "fgvc" if image_set.kind == "fgvc" else "vtab"
    if resize in ("vtab", "fgvc"):
        return resize
    raise InputError(f"unknown resize mode '{resize}'", "use one of: auto, vtab, fgvc")


def _check_preprocessing(resize: str, img_size: int, mean: Any, std: Any, interpolation: str) -> None:
    if resize not in ("vtab", "fgvc"):
        raise InputError(f"unknown resize mode '{resize}'", "use vtab or fgvc (resolve 'auto' first)")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise InputError(f"image size must be a positive integer, got {img_size!r}", "pass e.g. 224")
    if interpolation not in _INTERPOLATIONS:
        raise InputError(
            f"unknown interpolation '{interpolation}'", f"use one of: {', '.join(_INTERPOLATIONS)}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise InputError(
            f"mean and std need 3 values each, got {mean!r} and {std!r}", "pass one value per channel"
        )
    if any(float(s) == 0.0 for s in std):
        raise InputError(f"std must not contain 0, got {std!r}", "pass the model's normalisation std")


class ImageTransform:
    """Resize (VTAB squash or FGVC shorter side + centre crop), to tensor, normalise (picklable)."""

    def __init__(
        self,
        resize: str,
        img_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        interpolation: str = "bicubic",
    ) -> None:
        _check_preprocessing(resize, img_size, mean, std, interpolation)
        self.resize = resize
        self.img_size = img_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation

    def resize_image(self, img: Image.Image) -> Image.Image:
        """The geometric part only (useful for checking pixel values)."""
        resample = _INTERPOLATIONS[self.interpolation]
        size = self.img_size
        if self.resize == "vtab":
            return img.resize((size, size), resample)
        short = int(size / _FGVC_CROP_RATIO)
        w, h = img.size
        if w <= h:
            new_w, new_h = short, max(1, int(short * h / w))
        else:
            new_w, new_h = max(1, int(short * w / h)), short
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample)
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        return img.crop((left, top, left + size, top + size))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        import numpy as np
        import torch

        if img.mode != "RGB":
            img = _to_rgb(img, "<image>")
        arr = np.asarray(self.resize_image(img), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (tensor - mean) / std

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resize={self.resize!r}, img_size={self.img_size}, mean={self.mean}, "
            f"std={self.std}, interpolation={self.interpolation!r})"
        )


def make_transform(
    resize: str,
    img_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the PIL -> normalised CxHxW float tensor transform (no torchvision needed)."""
    return ImageTransform(resize, img_size, mean, std, interpolation)


def preprocessing_info(
    resize: str,
    img_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    interpolation: str = "bicubic",
) -> dict:
    """JSON-able record of the preprocessing, stored with artifacts so a run can be reproduced."""
    _check_preprocessing(resize, img_size, mean, std, interpolation)
    info: dict[str, Any] = {
        "resize": resize,
        "img_size": img_size,
        "interpolation": interpolation,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "to_rgb": True,
        "scale": "0..1",
    }
    if resize == "vtab":
        info["steps"] = [f"resize to {img_size}x{img_size} (no crop)", "to tensor [0,1]", "normalize"]
    else:
        short = int(img_size / _FGVC_CROP_RATIO)
        info["resize_shorter_side"] = short
        info["center_crop"] = img_size
        info["steps"] = [
            f"resize shorter side to {short}",
            f"center crop {img_size}",
            "to tensor [0,1]",
            "normalize",
        ]
    return info


class TorchImages:
    """Map-style dataset for ``torch.utils.data.DataLoader``: yields (tensor, label, index into image_set)."""

    def __init__(
        self, image_set: ImageSet, transform: Callable[[Image.Image], Any], indices: list[int] | None = None
    ) -> None:
        self.image_set = image_set
        self.transform = transform
        self.indices = list(range(len(image_set))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        index = self.indices[i]
        img = self.image_set.load_image(index)
        return self.transform(img), self.image_set.samples[index].label, index
