"""FGVC folders: images plus VPT's ``train.json`` / ``val.json`` / ``test.json`` split files."""

from __future__ import annotations

import json
from pathlib import Path

from vipamin_cli.errors import InputError
from vipamin_cli.validate import regular_input

from .images import ImageSet, Sample, _reason
from .labels import class_count
from .splits import _resolve_split, _safe_relpath

FGVC_SPLITS = ("train", "val", "test")


def _parse_fgvc_json(path: Path) -> list[tuple[str, int]]:
    regular_input(path, "split file", "pass a folder whose json split files are regular files")
    try:  # utf-8-sig: tolerate a byte-order mark
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
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
    present = {n: root / f"{n}.json" for n in FGVC_SPLITS
               if (root / f"{n}.json").exists() and not (root / f"{n}.json").is_dir()}
    name = _resolve_split(split, "train", present, str(root))
    parsed = {n: _parse_fgvc_json(p) for n, p in present.items()}
    num_classes = class_count(((label, f"{present[n]} ({rel})") for n, entries in parsed.items()
                               for rel, label in entries), str(root))
    samples = []
    for rel, label in parsed[name]:
        if (root / rel).exists() and not (root / rel).is_dir():
            key = rel
        elif (root / "images" / rel).exists() and not (root / "images" / rel).is_dir():
            key = f"images/{rel}"
        else:
            raise InputError(
                f"image not found: {root / rel} (also tried {root / 'images' / rel}; "
                f"listed in {present[name]})",
                "fix the json split file or restore the image",
            )
        samples.append(Sample(key, label))
    return ImageSet("fgvc", str(root), name, [str(i) for i in range(num_classes)], samples)

