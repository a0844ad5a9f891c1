"""Artifacts: safetensors files whose metadata says what they are and where they came from.

Every artifact carries, in the safetensors header under the key ``vipamin``, a JSON object with
the schema version, the artifact kind, a digest of its tensors and the provenance that later
commands compare (backbone identity, preprocessing, data fingerprint). Writes are atomic: a
temporary file in the same directory, fsync, then rename, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import SCHEMA_VERSION, __version__
from .errors import ArtifactError, InputError

if TYPE_CHECKING:
    import torch

META_KEY = "vipamin"
# Header fields the digest leaves out: the digest itself, and how a run was launched (``world_size``
# of a torchrun run), which does not change the content, so that a distributed embed has the same
# digest as a single-process one (later commands and the benchmark compare embeddings by digest).
UNDIGESTED = ("digest", "world_size")
KINDS = ("embeddings", "prompts", "checkpoint")


@dataclass
class Artifact:
    path: Path
    kind: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A content digest over names, dtypes, shapes and bytes of all tensors."""
    return _digest(tensors, None)


def artifact_digest(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """The digest recorded since schema 2: the tensors plus every metadata field but the digest itself,
    so an edited header (pooling, class names, provenance) fails ``--verify`` like an edited tensor."""
    return _digest(tensors, {k: v for k, v in header.items() if k not in UNDIGESTED})


def _digest(tensors: dict[str, torch.Tensor], header: dict[str, Any] | None) -> str:
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if header is not None:
        h.update(b"\0metadata\0")
        h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str | None = None, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it into place.

    The destination is checked through :mod:`iosafety` (never a symlink, FIFO or directory, never one of
    the command's inputs); a failure names the option the path came from: the one it was declared
    with, else ``what`` (default ``--out``). The temporary name is short (``.vp-XXXXXXXX.tmp``), so any
    legal destination name works. ``sync=False`` skips the fsync (many small files of a folder export).
    """
    from . import iosafety

    dest = Path(path)
    out = iosafety.output_for(dest, what)
    iosafety.check_not_read(dest, out)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output directory {parent}: {exc.strerror}", out.fix_location) from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable (writing {out.who})", out.fix_location)
    try:
        fd, tmp_path = iosafety.temp_file(parent)
    except OSError as exc:
        raise iosafety.write_failure(exc, out, dest) from None
    os.close(fd)
    try:
        with iosafety.writing(out):
            yield tmp_path
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # the temporary file (and safetensors) make 0600; use the usual mode
            if sync:
                with open(tmp_path, "rb") as fh:
                    os.fsync(fh.fileno())
            iosafety.check_replaceable(dest, out)
            iosafety.check_not_read(dest, out)
            os.replace(tmp_path, dest)
            iosafety.settle(tmp_path)
        iosafety.mark_written(dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        iosafety.settle(tmp_path)
        raise


def _as_os_error(exc: Exception) -> OSError:
    """safetensors reports I/O failures as SafetensorError('... (os error N)'): recover the errno."""
    text = str(exc)
    match = re.search(r"os error (\d+)", text)
    code = int(match.group(1)) if match else errno.EIO
    return OSError(code, os.strerror(code) if match else text)


def save_artifact(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str,
                  meta: dict[str, Any], what: str | None = None) -> Path:
    """Write ``tensors`` with provenance ``meta`` atomically. No timestamps: same inputs, same bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = dict(meta)
    header.update(schema_version=SCHEMA_VERSION, kind=kind, tool_version=__version__)
    header = json.loads(json.dumps(header, sort_keys=True))  # the digest sees what a reader will parse
    header["digest"] = artifact_digest(tensors, header)
    dest = Path(path)
    with atomic_path(dest, what) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(header, sort_keys=True)})
        except SafetensorError as exc:
            raise _as_os_error(exc) from None
    return dest


# Metadata fields later commands read, per kind: a header without them is refused up front.
REQUIRED = {
    "embeddings": {"backbone": dict, "preprocessing": dict, "data": dict},
    "prompts": {"backbone": dict, "method": str, "config": dict},
    "checkpoint": {"backbone": dict, "data": dict, "pool": str, "grid": list, "num_classes": int},
}


def _check_structure(p: Path, meta: Any) -> dict[str, Any]:
    damaged = "the metadata is damaged or was edited: re-create the file"
    if not isinstance(meta, dict):
        raise ArtifactError(f"{p} has vipamin metadata of the wrong form ({type(meta).__name__}, not an object)",
                            damaged)
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ArtifactError(f"{p} has schema version {version}, newer than this vipamin understands ({SCHEMA_VERSION})",
                            "upgrade vipamin (pip install -U vipamin)")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ArtifactError(f"{p} has an unknown artifact kind {kind!r}", damaged)
    for key, typ in REQUIRED[kind].items():
        if not isinstance(meta.get(key), typ):
            missing = key not in meta
            raise ArtifactError(f"{p} metadata {'lacks' if missing else 'has a malformed'} '{key}'", damaged)
    data = meta.get("data")
    if isinstance(data, dict) and not isinstance(data.get("class_names", []), list):
        raise ArtifactError(f"{p} metadata has a malformed 'data.class_names'", damaged)
    return meta


def read_metadata(path: str | os.PathLike, what: str = "artifact", own: bool = False) -> dict[str, Any]:
    """Read only the header: cheap, and enough for `info` and for matching cache entries. ``what`` names
    the input in messages; ``own``: the command's own file (a cache entry, resume state), not an input."""
    from safetensors import SafetensorError, safe_open

    from .validate import regular_input

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact not found: {p}", "check the path (make it with `vipamin embed`/`init`/`tune`)")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory, not an artifact", "pass a .safetensors file")
    regular_input(p, what, "pass a .safetensors file written by vipamin", own=own)
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{p} is not a readable safetensors file ({str(exc)[:120]})",
                            "the file is truncated or of another format: re-create it") from None
    if raw is None:
        raise ArtifactError(f"{p} has no vipamin metadata (made by another tool?)",
                            "pass a file written by vipamin embed/init/tune")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ArtifactError(f"{p} has corrupt vipamin metadata", "re-create the file") from None
    return _check_structure(p, meta)


def load_artifact(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None, verify: bool = True,
                  what: str = "artifact", own: bool = False) -> Artifact:
    """Load and check an artifact: its kind, its schema version and its digest (tensors + metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_metadata(p, what, own)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and meta.get("kind") not in kinds:
        found = str(meta.get("kind"))
        article = "an" if found[:1] in "aeiou" else "a"
        raise ArtifactError(f"{p} is {article} {found} file, but {what} must be {' or '.join(kinds)}",
                            f"pass {'an' if kinds[0][0] in 'aeiou' else 'a'} {kinds[0]} file")
    if verify and meta["schema_version"] < SCHEMA_VERSION:
        raise ArtifactError(f"{p} was written by an older vipamin (schema {meta['schema_version']}), whose digest "
                            "does not cover the metadata, so it cannot be verified",
                            "re-create it with this version (cache entries are re-made automatically)")
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{p} is damaged ({str(exc)[:120]})", "re-create the file") from None
    if verify and artifact_digest(tensors, meta) != meta.get("digest"):
        raise ArtifactError(f"{p} failed its integrity check (its digest over tensors and metadata differs from "
                            "the recorded one)", "the file was modified or damaged: re-create it")
    return Artifact(path=p, kind=meta["kind"], meta=meta, tensors=tensors)


def describe_tensors(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Names, dtypes and shapes without loading the data."""
    from safetensors import safe_open

    out: dict[str, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            sl = fh.get_slice(name)
            out[name] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
    return out


def check_same_backbone(a: dict[str, Any], b: dict[str, Any], what_a: str, what_b: str) -> None:
    """Refuse a pair of artifacts made with different backbones or weights."""
    ia, ib = a.get("backbone", {}), b.get("backbone", {})
    if ia.get("name") != ib.get("name") or ia.get("weights_fingerprint") != ib.get("weights_fingerprint"):
        raise ArtifactError(
            f"{what_a} was made with backbone '{ia.get('name')}' ({str(ia.get('weights_fingerprint'))[:8]}) but "
            f"{what_b} with '{ib.get('name')}' ({str(ib.get('weights_fingerprint'))[:8]})",
            "use artifacts made from the same backbone and weights")
