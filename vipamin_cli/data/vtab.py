"""VTAB-1k folders: images plus ``train800.txt`` / ``val200.txt`` / ``train800val200.txt`` / ``test.txt``."""

from __future__ import annotations

from pathlib import Path

from vipamin_cli.errors import InputError
from vipamin_cli.parsing import int_or_none
from vipamin_cli.validate import regular_input

from .images import ImageSet, Sample, _reason
from .labels import class_count
from .splits import _resolve_split, _safe_relpath

VTAB_LIST_FILES = {
    "train800": "train800.txt",
    "val200": "val200.txt",
    "train800val200": "train800val200.txt",
    "test": "test.txt",
}
VTAB_ALIASES = {"train": "train800", "val": "val200", "trainval": "train800val200"}


def _parse_vtab_list(path: Path) -> list[tuple[str, int, int]]:
    """Parse ``relative/path label`` lines; returns (path, label, line number)."""
    regular_input(path, "list file", "pass a folder whose list files are regular files")
    try:  # utf-8-sig: a byte-order mark written by some editors must not end up in the first path
        text = path.read_text(encoding="utf-8-sig")
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
        label = int_or_none(parts[1]) if len(parts) == 2 else None  # strict: '1_0' or '+1' is no label
        if label is None or label < 0:
            raise InputError(
                f"bad line in {path} line {lineno}: {stripped!r}",
                "each line must be '<relative image path> <non-negative integer label>'",
            )
        entries.append((_safe_relpath(parts[0], f"{path} line {lineno}"), label, lineno))
    return entries


def _open_vtab(root: Path, split: str | None) -> ImageSet:
    present = {name: root / fname for name, fname in VTAB_LIST_FILES.items()
               if (root / fname).exists() and not (root / fname).is_dir()}
    name = _resolve_split(split, "train800", present, str(root), VTAB_ALIASES)
    parsed = {n: _parse_vtab_list(p) for n, p in present.items()}
    num_classes = class_count(((label, f"{present[n]} line {lineno}") for n, entries in parsed.items()
                               for _, label, lineno in entries), str(root))
    samples = []
    for rel, label, lineno in parsed[name]:
        if not (root / rel).exists() or (root / rel).is_dir():
            raise InputError(
                f"image not found: {root / rel} (listed in {present[name]} line {lineno})",
                "fix the list file or restore the image",
            )
        samples.append(Sample(rel, label))
    return ImageSet("vtab", str(root), name, [str(i) for i in range(num_classes)], samples)

