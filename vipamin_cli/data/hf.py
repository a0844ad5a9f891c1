"""Hugging Face datasets: ``hf:<owner>/<name>`` from the hub and ``hf-disk:<folder>`` from save_to_disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vipamin_cli.errors import InputError

from .images import ImageSet, Sample, _reason
from .splits import _resolve_split


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
