"""Helpers shared by the list-file sources: split names and aliases, safe relative paths."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from vipamin_cli.errors import InputError

_DATA_FIX = (
    "pass an image folder, a VTAB-1k folder with list files, an FGVC folder with json splits, "
    "or hf:<owner>/<name>"
)


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

