"""Image data sources: image folders, VTAB-1k list files, FGVC json splits and Hugging Face datasets.

Everything here turns user input into an :class:`ImageSet` (a list of ``(key, label)`` samples plus a way to
load each one as an RGB PIL image) or raises :class:`InputError` naming the bad input and the fix. Heavy
libraries (torch, numpy, datasets) are imported inside functions so that ``vipamin --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from vipamin_cli.errors import InputError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

VTAB_LIST_FILES = {
    "train800": "train800.txt",
    "val200": "val200.txt",
    "train800val200": "train800val200.txt",
    "test": "test.txt",
}
VTAB_ALIASES = {"train": "train800", "val": "val200", "trainval": "train800val200"}
FGVC_SPLITS = ("train", "val", "test")
FOLDER_SPLITS = ("train", "val", "test")

_DATA_FIX = (
    "pass an image folder, a VTAB-1k folder with list files, an FGVC folder with json splits, "
    "or hf:<owner>/<name>"
)
_IMAGE_FIX = "remove or replace the file"
_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_FGVC_CROP_RATIO = 0.875


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


# ----------------------------------------------------------------------------------------------------------
# Image loading and mode conversion


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _file_digest(path: str) -> tuple[int, str]:
    h = hashlib.blake2b(digest_size=16)
    size = 0
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


def _open_loaded(source: Any, where: str) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt files; all are bad input
        raise InputError(f"cannot read image {where}: {_reason(exc)}", _IMAGE_FIX) from exc
    return img


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so truncation is caught now) and return it as RGB."""
    where = os.fspath(path)
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


# ----------------------------------------------------------------------------------------------------------
# Opening datasets


def open_dataset(
    data: str,
    split: str | None = None,
    shots: int | None = None,
    seed: int = 0,
    image_column: str = "image",
    label_column: str = "label",
) -> ImageSet:
    """Decide what kind of dataset ``data`` is, resolve ``split`` and optionally draw a few-shot subset."""
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots <= 0):
        raise InputError(f"shots must be a positive integer, got {shots!r}", "pass --shots K with K >= 1")
    data = str(data)
    if not data.strip():
        raise InputError("data path is empty", _DATA_FIX)
    if data.startswith("hf-disk:"):
        image_set = _open_hf_disk(data[len("hf-disk:") :], split, image_column, label_column)
    elif data.startswith("hf:"):
        image_set = _open_hf_hub(data[len("hf:") :], split, image_column, label_column)
    else:
        image_set = _open_directory(data, split)
    if not image_set.samples:
        raise InputError(
            f"split '{image_set.split}' of {data} has no images",
            "choose another split or add images to this one",
        )
    image_set.seed = seed
    if shots is not None:
        image_set.samples = _few_shot(image_set, shots, seed)
        image_set.shots = shots
    return image_set


def _open_directory(data: str, split: str | None) -> ImageSet:
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(f"data path not found: {data}", _DATA_FIX)
    if not path.is_dir():
        raise InputError(f"data path is not a directory: {data}", _DATA_FIX)
    root = path.resolve()
    if any((root / name).is_file() for name in VTAB_LIST_FILES.values()):
        return _open_vtab(root, split)
    if any((root / f"{name}.json").is_file() for name in FGVC_SPLITS):
        return _open_fgvc(root, split)
    train = root / "train"
    if train.is_dir() and _class_dirs(train):
        return _open_folder_splits(root, split)
    return _open_folder(root, split)


def _safe_relpath(rel: str, source: str) -> str:
    """Normalise a listed path and refuse ones that leave the dataset root."""
    rel = rel.strip()
    norm = posixpath.normpath(rel) if rel else ""
    if not rel or posixpath.isabs(rel) or os.path.isabs(rel) or norm == ".." or norm.startswith("../"):
        raise InputError(
            f"image path {rel!r} in {source} is outside the dataset root",
            "list paths relative to the dataset folder, without leading '/' or '..'",
        )
    return norm


def _resolve_split(
    requested: str | None,
    default: str,
    available: Iterable[str],
    data: str,
    aliases: dict[str, str] | None = None,
) -> str:
    available = list(available)
    name = default if requested is None else requested
    name = (aliases or {}).get(name, name)
    if name not in available:
        valid = ", ".join(available) if available else "(none)"
        alias_text = ""
        if aliases:
            alias_text = " (aliases: " + ", ".join(f"{a}->{b}" for a, b in aliases.items()) + ")"
        raise InputError(f"unknown split '{name}' for {data}", f"use one of: {valid}{alias_text}")
    return name


def _parse_vtab_list(path: Path) -> list[tuple[str, int, int]]:
    """Parse ``relative/path label`` lines; returns (path, label, line number)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read list file {path}: {_reason(exc)}", "fix or regenerate the list file"
        ) from exc
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        parts = stripped.rsplit(None, 1)
        label: int | None = None
        if len(parts) == 2:
            try:
                label = int(parts[1])
            except ValueError:
                label = None
        if label is None or label < 0:
            raise InputError(
                f"bad line in {path} line {lineno}: {stripped!r}",
                "each line must be '<relative image path> <non-negative integer label>'",
            )
        entries.append((_safe_relpath(parts[0], f"{path} line {lineno}"), label, lineno))
    return entries


def _open_vtab(root: Path, split: str | None) -> ImageSet:
    present = {name: root / fname for name, fname in VTAB_LIST_FILES.items() if (root / fname).is_file()}
    name = _resolve_split(split, "train800", present, str(root), VTAB_ALIASES)
    parsed = {n: _parse_vtab_list(p) for n, p in present.items()}
    max_label = max((label for entries in parsed.values() for _, label, _ in entries), default=-1)
    samples = []
    for rel, label, lineno in parsed[name]:
        if not (root / rel).is_file():
            raise InputError(
                f"image not found: {root / rel} (listed in {present[name]} line {lineno})",
                "fix the list file or restore the image",
            )
        samples.append(Sample(rel, label))
    return ImageSet("vtab", str(root), name, [str(i) for i in range(max_label + 1)], samples)


def _parse_fgvc_json(path: Path) -> list[tuple[str, int]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"cannot read split file {path}: {_reason(exc)}", "fix or regenerate the json file"
        ) from exc
    if not isinstance(obj, dict):
        raise InputError(
            f"split file {path} is not a JSON object", "map each relative image path to an int label"
        )
    entries = []
    for rel, label in obj.items():
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise InputError(
                f"bad label {label!r} for {rel!r} in {path}",
                "map each relative image path to a non-negative integer label",
            )
        entries.append((_safe_relpath(str(rel), str(path)), label))
    return entries


def _open_fgvc(root: Path, split: str | None) -> ImageSet:
    present = {n: root / f"{n}.json" for n in FGVC_SPLITS if (root / f"{n}.json").is_file()}
    name = _resolve_split(split, "train", present, str(root))
    parsed = {n: _parse_fgvc_json(p) for n, p in present.items()}
    max_label = max((label for entries in parsed.values() for _, label in entries), default=-1)
    samples = []
    for rel, label in parsed[name]:
        if (root / rel).is_file():
            key = rel
        elif (root / "images" / rel).is_file():
            key = f"images/{rel}"
        else:
            raise InputError(
                f"image not found: {root / rel} (also tried {root / 'images' / rel}; "
                f"listed in {present[name]})",
                "fix the json split file or restore the image",
            )
        samples.append(Sample(key, label))
    return ImageSet("fgvc", str(root), name, [str(i) for i in range(max_label + 1)], samples)


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise InputError(
            f"cannot list folder {folder}: {_reason(exc)}", "check the path and its permissions"
        ) from exc


def _find_images(class_dir: Path, root: Path) -> list[str]:
    """Image files under ``class_dir`` (recursive, hidden entries skipped), as sorted root-relative keys."""
    keys = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname.startswith(".") or os.path.splitext(fname)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            keys.append(Path(os.path.relpath(os.path.join(dirpath, fname), root)).as_posix())
    if not keys:
        raise InputError(
            f"class folder has no images: {class_dir}",
            f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder",
        )
    return sorted(keys)


def _samples_from_classes(base: Path, root: Path, class_names: list[str]) -> list[Sample]:
    samples = []
    for label, name in enumerate(class_names):
        class_dir = base / name
        if class_dir.is_dir():
            samples.extend(Sample(key, label) for key in _find_images(class_dir, root))
    return samples


def _open_folder_splits(root: Path, split: str | None) -> ImageSet:
    present = [n for n in FOLDER_SPLITS if (root / n).is_dir()]
    name = _resolve_split(split, "train", present, str(root))
    class_names = sorted({c for n in present for c in _class_dirs(root / n)})
    samples = _samples_from_classes(root / name, root, class_names)
    return ImageSet("folder-splits", str(root), name, class_names, samples)


def _open_folder(root: Path, split: str | None) -> ImageSet:
    name = _resolve_split(split, "all", ["all"], str(root))
    class_names = _class_dirs(root)
    if not class_names:
        raise InputError(
            f"no class folders in {root}", "put the images in one subfolder per class, or " + _DATA_FIX
        )
    return ImageSet("folder", str(root), name, class_names, _samples_from_classes(root, root, class_names))


# ----------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def _open_hf_hub(name: str, split: str | None, image_column: str, label_column: str) -> ImageSet:
    if not name.strip():
        raise InputError("empty dataset name in 'hf:'", "pass hf:<owner>/<name>")
    resolved = split or "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, split=resolved)
    except Exception as exc:  # offline, unknown name, unknown split: all bad input
        raise InputError(
            f"cannot load dataset hf:{name} (split {resolved}): {_reason(exc)}",
            "check the dataset name, split and network access, or export it to an image folder",
        ) from exc
    return _hf_image_set(ds, f"hf:{name}", resolved, image_column, label_column)


def _open_hf_disk(path: str, split: str | None, image_column: str, label_column: str) -> ImageSet:
    disk = Path(path).expanduser()
    if not disk.exists():
        raise InputError(f"data path not found: {path}", "pass hf-disk:<folder written by save_to_disk>")
    try:
        import datasets

        loaded = datasets.load_from_disk(str(disk))
    except Exception as exc:  # any failure means the folder is not a saved dataset
        raise InputError(
            f"cannot load dataset from {path}: {_reason(exc)}",
            "pass a folder written by datasets' save_to_disk",
        ) from exc
    root = f"hf-disk:{disk.resolve()}"
    if isinstance(loaded, datasets.DatasetDict):
        resolved = _resolve_split(split, "train", list(loaded.keys()), root)
        ds = loaded[resolved]
    else:
        resolved = _resolve_split(split, "train", ["train"], root)
        ds = loaded
    return _hf_image_set(ds, root, resolved, image_column, label_column)


def _hf_image_set(ds: Any, root: str, split: str, image_column: str, label_column: str) -> ImageSet:
    import datasets

    columns = list(ds.column_names)
    for role, col in (("image", image_column), ("label", label_column)):
        if col not in columns:
            raise InputError(
                f"{role} column '{col}' not found in {root}; available columns: {', '.join(columns)}",
                f"pass the {role} column name explicitly (one of: {', '.join(columns)})",
            )
    ds_fingerprint = getattr(ds, "_fingerprint", None)
    feature = ds.features.get(label_column)
    values = list(ds[label_column])
    if isinstance(feature, datasets.ClassLabel):
        class_names = list(feature.names)
        labels = values
    else:
        unique = set(values)
        try:
            ordered = sorted(unique)
        except TypeError:
            ordered = sorted(unique, key=str)
        class_names = [str(v) for v in ordered]
        index = {v: i for i, v in enumerate(ordered)}
        labels = [index[v] for v in values]
    samples = []
    for row, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(class_names):
            raise InputError(
                f"row {row} of {root} has label {values[row]!r}, not one of the {len(class_names)} classes",
                "use a split where every row is labelled, or pass another label column",
            )
        samples.append(Sample(f"hf:{row}", label))
    if isinstance(ds.features.get(image_column), datasets.Image):
        # Decode ourselves so that a corrupt image gives a clear error naming the row.
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    image_set = ImageSet("hf", root, split, class_names, samples)
    image_set._hf_dataset = ds
    image_set._hf_fingerprint = ds_fingerprint
    image_set._image_column = image_column
    image_set._label_column = label_column
    return image_set


# ----------------------------------------------------------------------------------------------------------
# Few-shot


def _sample_order(sample: Sample) -> tuple[int, int, str]:
    if sample.key.startswith("hf:") and sample.key[3:].isdigit():
        return (sample.label, int(sample.key[3:]), "")
    return (sample.label, 0, sample.key)


def _few_shot(image_set: ImageSet, shots: int, seed: int) -> list[Sample]:
    """Exactly ``shots`` samples per class, drawn reproducibly from ``seed``."""
    by_class: dict[int, list[Sample]] = {i: [] for i in range(len(image_set.class_names))}
    for s in image_set.samples:
        by_class[s.label].append(s)
    smallest = min(len(m) for m in by_class.values())
    for label, members in by_class.items():
        if len(members) < shots:
            fix = (
                f"pass --shots {smallest} or less, or use a larger split"
                if smallest > 0
                else "use a split that has images of every class, or leave out --shots"
            )
            raise InputError(
                f"--shots {shots} is more than class '{image_set.class_names[label]}' has "
                f"({len(members)} images in split '{image_set.split}')",
                fix,
            )
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=_sample_order)
        chosen.extend(rng.sample(members, shots))
    return sorted(chosen, key=_sample_order)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


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
