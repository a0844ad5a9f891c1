"""Decide what kind of dataset a ``--data`` value is and open the requested split."""

from __future__ import annotations

from pathlib import Path

from vipamin_cli.errors import InputError

from .fewshot import _few_shot
from .fgvc import FGVC_SPLITS, _open_fgvc
from .folders import _class_dirs, _open_folder, _open_folder_splits
from .hf import _open_hf_disk, _open_hf_hub
from .images import ImageSet
from .splits import _DATA_FIX
from .vtab import VTAB_LIST_FILES, _open_vtab


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
    if image_set.kind != "hf":  # the images this command reads: no output may be one of them
        from vipamin_cli.iosafety import declare_input_set

        declare_input_set(f"--data {image_set.root}", image_set.root, (s.key for s in image_set.samples))
    return image_set


def _listed(path: Path) -> bool:
    """A list/split file is present: anything but a folder (a FIFO is then refused, not skipped)."""
    return path.exists() and not path.is_dir()


def _open_directory(data: str, split: str | None) -> ImageSet:
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(f"data path not found: {data}", _DATA_FIX)
    if not path.is_dir():
        raise InputError(f"data path is not a directory: {data}", _DATA_FIX)
    root = path.resolve()
    if any(_listed(root / name) for name in VTAB_LIST_FILES.values()):
        return _open_vtab(root, split)
    if any(_listed(root / f"{name}.json") for name in FGVC_SPLITS):
        return _open_fgvc(root, split)
    train = root / "train"
    if train.is_dir() and _class_dirs(train):
        return _open_folder_splits(root, split)
    return _open_folder(root, split)

