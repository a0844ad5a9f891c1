"""Class-folder datasets: ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``."""

from __future__ import annotations

import os
from pathlib import Path

from vipamin_cli.errors import InputError

from .images import IMAGE_EXTENSIONS, ImageSet, Sample, _reason
from .splits import _DATA_FIX, _resolve_split

FOLDER_SPLITS = ("train", "val", "test")


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
