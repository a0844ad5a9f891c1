"""Content-addressed cache of embeddings: the expensive forward pass runs once per input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``$VIPAMIN_CACHE``, else the user's cache directory."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("VIPAMIN_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vipamin"))


def content_key(parts: dict[str, Any]) -> str:
    """A stable digest of everything that determines an artifact's content."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def embeddings_path(root: Path, key: str) -> Path:
    return root / "embeddings" / f"{key}.safetensors"
