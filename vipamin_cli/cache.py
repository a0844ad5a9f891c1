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


def cache_option(explicit: str | os.PathLike | None = None) -> str:
    """How the user named the cache, for messages: --cache-dir, $VIPAMIN_CACHE or the default."""
    if explicit:
        return "--cache-dir"
    return "VIPAMIN_CACHE" if os.environ.get("VIPAMIN_CACHE") else "the cache directory"


def checked_cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """``cache_root`` checked up front: a file, or a folder that cannot be created, is one clear error."""
    from .validate import cache_dir

    return cache_dir(cache_root(explicit), cache_option(explicit))


def content_key(parts: dict[str, Any]) -> str:
    """A stable digest of everything that determines an artifact's content."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def embeddings_path(root: Path, key: str) -> Path:
    return root / "embeddings" / f"{key}.safetensors"


@contextlib.contextmanager
def entry_lock(path: Path, option: str = "the cache directory") -> Iterator[None]:
    """Serialise processes filling the same cache entry: the second waits, then finds it done.

    A read-only shared cache cannot hold lock files: then the entry is read without a lock (entries
    are renamed into place whole, so a reader never sees half of one) and a miss fails on the write.
    """
    from . import iosafety

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    fd = iosafety.open_lock(lock, iosafety.Output(lock, option, "the cache entry's lock"),
                            pid_file=False)
    if fd is None:
        yield
        return
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: atomic rename alone keeps entries whole
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

