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


def _inside(path: str, real_root: str) -> bool:
    """Whether ``path``, links resolved, is the dataset root or lies under it."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _list_folder(folder: str) -> tuple[tuple[int, int], list[os.DirEntry[str]]]:
    """The folder's (device, inode), to detect a folder reached twice, and its entries sorted by name,
    so the walk order (and thus the keys) does not depend on the file system."""
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list folder {folder}: {_reason(exc)}",
                         "check the path and its permissions") from exc
    return (st.st_dev, st.st_ino), entries


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, with an unreadable entry (e.g. a dangling link) taken as a file."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _claim_image(path: str, root: Path, seen: dict[tuple[int, int], str]) -> str:
    """The image's root-relative key, entered in ``seen`` by (device, inode); a file already seen under
    another key (linked twice) is refused, so no image is counted twice or under two labels."""
    key = Path(os.path.relpath(path, root)).as_posix()
    try:
        fst = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {_reason(exc)}", "remove or replace the file") from exc
    ident = (fst.st_dev, fst.st_ino)
    if ident in seen:
        raise InputError(f"image {key} is the same file as {seen[ident]} (linked twice) in {root}",
                         "remove one of the links; each image must appear once, under one class")
    seen[ident] = key
    return key


def _find_images(class_dir: Path, root: Path, seen: dict[tuple[int, int], str] | None = None) -> list[str]:
    """Image files under ``class_dir`` (recursive, hidden entries skipped), as sorted root-relative keys.

    Links are followed, but a folder reached twice (a symlink loop, or a link to a parent) is refused,
    as is anything that resolves outside the dataset root or a file already counted (``seen`` maps
    (device, inode) to its key, across all classes): otherwise one image would be counted twice,
    possibly under two labels.
    """
    seen = {} if seen is None else seen
    real_root = os.path.realpath(root)
    keys: list[str] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        ident, entries = _list_folder(folder)
        if ident in visited:
            raise InputError(f"folder link {folder} leads back to a folder already read (a symlink loop or a link to "
                             f"a parent) in {class_dir}", "remove the link; each image must be reachable once")
        visited.add(ident)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.path
            if entry.is_symlink() and not _inside(path, real_root):
                raise InputError(f"link {path} points outside the dataset root {root} (to {os.path.realpath(path)})",
                                 "copy the images into the dataset folder or remove the link")
            if _is_dir(entry):
                walk(path)
                continue
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            keys.append(_claim_image(path, root, seen))

    walk(os.fspath(class_dir))
    if not keys:
        raise InputError(
            f"class folder has no images: {class_dir}",
            f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder",
        )
    return sorted(keys)


def _samples_from_classes(base: Path, root: Path, class_names: list[str]) -> list[Sample]:
    samples = []
    seen: dict[tuple[int, int], str] = {}
    for label, name in enumerate(class_names):
        class_dir = base / name
        if class_dir.is_dir():
            samples.extend(Sample(key, label) for key in _find_images(class_dir, root, seen))
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
