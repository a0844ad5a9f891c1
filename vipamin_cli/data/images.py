"""Samples, image sets and image loading: every PIL mode converted to RGB, unreadable files named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vipamin_cli.errors import InputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

_IMAGE_FIX = "remove or replace the file"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``key`` is the path relative to the dataset root, or ``hf:<row>`` for hub data."""

    key: str
    label: int


@dataclass
class ImageSet:
    """A resolved split of a dataset: the samples, the class names and how to load each image."""

    kind: str
    root: str
    split: str
    class_names: list[str]
    samples: list[Sample]
    shots: int | None = None
    seed: int = 0
    _hf_dataset: Any = field(default=None, repr=False, compare=False)
    _hf_fingerprint: str | None = field(default=None, repr=False, compare=False)
    _image_column: str = field(default="image", repr=False, compare=False)
    _label_column: str = field(default="label", repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Load sample ``index`` as an RGB image (every mode converted; unreadable files -> InputError)."""
        sample = self.samples[index]
        if self.kind == "hf":
            row = int(sample.key[3:])
            where = f"{self.root} row {row}"
            try:
                value = self._hf_dataset[row][self._image_column]
            except Exception as exc:  # any datasets failure is a bad-input problem here
                raise InputError(f"cannot read image {where}: {_reason(exc)}", _IMAGE_FIX) from exc
            return _hf_value_to_rgb(value, where)
        return load_rgb(os.path.join(self.root, sample.key))

    def fingerprint(self) -> str:
        """Digest of exactly what a run sees, so artifacts can tell whether they came from the same data."""
        h = hashlib.blake2b(digest_size=16)

        def put(obj: Any) -> None:
            h.update(json.dumps(obj, sort_keys=True).encode("utf-8"))
            h.update(b"\n")

        put({"kind": self.kind, "split": self.split, "shots": self.shots, "seed": self.seed})
        put(self.class_names)
        if self.kind == "hf":
            put(
                {
                    "hf_fingerprint": self._hf_fingerprint,
                    "image_column": self._image_column,
                    "label_column": self._label_column,
                }
            )
            for s in self.samples:
                put([s.key, s.label])
            return h.hexdigest()
        for s in self.samples:
            path = os.path.join(self.root, s.key)
            size, digest = _file_digest(path)
            put([s.key, s.label, size, digest])
        return h.hexdigest()

    def describe(self, fingerprint: str | None = None) -> dict:
        """JSON-able summary recorded in artifact metadata (pass a fingerprint already computed)."""
        return {
            "kind": self.kind,
            "root": self.root,
            "split": self.split,
            "shots": self.shots,
            "seed": self.seed,
            "num_samples": len(self.samples),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "fingerprint": fingerprint or self.fingerprint(),
        }



def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _file_digest(path: str) -> tuple[int, str]:
    h = hashlib.blake2b(digest_size=16)
    size = 0
    _regular_image(path, own=True)  # recorded once for the whole set (iosafety.declare_input_set)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {_reason(exc)}", _IMAGE_FIX) from exc
    return size, h.hexdigest()


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited over white, 16/32-bit data is scaled to 0..255."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _INT16_MODES or mode in {"I", "F"}:
        import numpy as np

        arr = np.asarray(img)
        if mode in _INT16_MODES:
            scaled = np.rint(arr.astype(np.float64) / 257.0)
        else:
            arr = arr.astype(np.float64)
            finite = np.isfinite(arr)
            if not finite.any():
                scaled = np.zeros(arr.shape, dtype=np.float64)
            else:
                lo, hi = float(arr[finite].min()), float(arr[finite].max())
                arr = np.where(finite, arr, lo)
                scaled = np.zeros_like(arr) if hi <= lo else np.rint((arr - lo) * (255.0 / (hi - lo)))
        gray = np.clip(scaled, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(
            f"cannot convert image {where} (mode {mode}) to RGB: {_reason(exc)}", _IMAGE_FIX
        ) from exc


# PIL warns (DecompressionBombWarning) on images between MAX_IMAGE_PIXELS and twice that, straight to
# stderr and even under VIPAMIN_QUIET: vipamin says it itself, once per image, as a note (open_image).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(source: Any, where: str, decode: bool = True) -> Image.Image:
    """The one way vipamin opens an image: PIL's header read (and full decode with ``decode``, so a
    truncated file is caught now); an image over PIL's decompression-bomb warning size gets vipamin's
    own note instead of PIL's raw warning. Any PIL failure is one line naming the file."""
    try:
        img = Image.open(source)
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            from vipamin_cli.ui import info

            info(f"note: image {where} has {img.width * img.height:,} pixels, more than PIL's decompression-bomb "
                 f"warning size ({limit:,}); decoding it anyway (twice that size is refused)")
        if decode:
            img.load()
    except Exception as exc:  # PIL raises many types for corrupt files; all are bad input
        raise InputError(f"cannot read image {where}: {_reason(exc)}", _IMAGE_FIX) from exc
    return img


def _open_loaded(source: Any, where: str) -> Image.Image:
    return open_image(source, where)


def _regular_image(path: str | os.PathLike, own: bool = False) -> None:
    """A FIFO or device named like an image would block (or never end) when opened: refuse it first
    (through the one input gate, :func:`iosafety.check_input`)."""
    from vipamin_cli.iosafety import check_input

    check_input(path, "image", _IMAGE_FIX, own=own, missing_fix=_IMAGE_FIX)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so truncation is caught now) and return it as RGB."""
    where = os.fspath(path)
    _regular_image(where, own=True)
    img = _open_loaded(where, where)
    return _to_rgb(img, where)


def _hf_value_to_rgb(value: Any, where: str) -> Image.Image:
    """Hub rows carry a PIL image, a ``{"bytes", "path"}`` dict or a path string."""
    if isinstance(value, Image.Image):
        return _to_rgb(value, where)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            return _to_rgb(_open_loaded(io.BytesIO(data), where), where)
        if value.get("path"):
            return load_rgb(value["path"])
    elif isinstance(value, (str, os.PathLike)):
        return load_rgb(value)
    raise InputError(
        f"cannot read image {where}: unsupported value of type {type(value).__name__}",
        "pass --image-column naming a column that holds images",
    )

