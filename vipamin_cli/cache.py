"""Content-addressed cache of embeddings: the expensive forward pass runs once per input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Serialise processes filling the same cache entry: the second waits, then finds it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: atomic rename alone keeps entries whole
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
