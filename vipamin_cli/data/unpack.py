"""Read zip and tar archives safely: every entry checked before anything is written, members streamed.

Archives come from a hub mirror or from a user's download, so their entry names are not trusted:
an absolute path, a ``..`` component, a link or a device entry could write outside the target
folder (zip-slip, tar links) or block on a FIFO. :func:`open_archive` lists an archive and refuses
it, naming the entry, if any entry is unsafe; :func:`extract` then copies chosen members into a
folder in 1 MiB chunks (a 4.66 GB zip never sits in memory), creating each file exclusively so
that nothing already on disk is followed or overwritten.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vipamin_cli.errors import InputError, RuntimeFailure

CHUNK = 1 << 20
# What a damaged archive raises while it is listed or read (truncated gzip stream, bad CRC, ...).
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, lzma.LZMAError, gzip.BadGzipFile)


class UnsafeArchive(InputError):
    """An archive entry that could write outside the target folder: the whole archive is refused."""


@dataclass(frozen=True, slots=True)  # one per entry: VTAB-1k's zip has hundreds of thousands
class Member:
    """One archive entry: its checked relative name, uncompressed size and whether it is a folder."""

    name: str
    size: int
    is_dir: bool
    ref: object  # the ZipInfo or TarInfo


@dataclass
class Archive:
    path: Path
    kind: str  # "zip" | "tar"
    members: list[Member]
    corrupt_fix: str  # what to tell the user when the archive turns out to be damaged
    user_file: bool = False  # the user's own file (--from): a damaged one is bad input (exit 2)

    def files(self) -> Iterator[Member]:
        return (m for m in self.members if not m.is_dir)


def _refuse(archive: Path, raw: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(f"unsafe entry {raw!r} in {archive}: {why}",
                         "vipamin refuses archives with absolute paths, '..', links or device entries; "
                         "get the archive again from its source")


def safe_name(raw: str, archive: Path) -> str:
    """The entry name as a clean relative POSIX path, or UnsafeArchive naming the entry."""
    if "\x00" in raw:
        raise _refuse(archive, raw, "the name contains a NUL byte")
    if "\\" in raw:
        raise _refuse(archive, raw, "the name contains a backslash (a Windows path separator)")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _refuse(archive, raw, "absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, raw, "the path goes outside the folder ('..')")
    if not parts:
        raise _refuse(archive, raw, "empty name")
    return "/".join(parts)


def _zip_member(info: zipfile.ZipInfo, archive: Path) -> Member:
    name = safe_name(info.filename, archive)
    mode = info.external_attr >> 16  # Unix mode bits, 0 for archives made on Windows
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise _refuse(archive, info.filename, "symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(archive, info.filename, "device, FIFO or socket entry")
    return Member(name, info.file_size, info.is_dir() or kind == stat.S_IFDIR, info)


def _tar_member(info: tarfile.TarInfo, archive: Path) -> Member:
    name = safe_name(info.name, archive)
    if info.issym() or info.islnk():
        raise _refuse(archive, info.name, f"{'symbolic' if info.issym() else 'hard'} link to {info.linkname!r}")
    if info.ischr() or info.isblk() or info.isfifo():
        raise _refuse(archive, info.name, "device or FIFO entry")
    if not (info.isreg() or info.isdir()):
        raise _refuse(archive, info.name, f"entry of unsupported type {info.type!r}")
    return Member(name, info.size, info.isdir(), info)


def _check_duplicates(members: list[Member], archive: Path) -> None:
    seen: set[str] = set()
    for m in members:
        if m.name in seen and not m.is_dir:
            raise _refuse(archive, m.name, "the same path appears twice (a later copy would replace the first)")
        seen.add(m.name)


def corrupt(path: Path, reason: object, fix: str, user_file: bool = False) -> InputError | RuntimeFailure:
    """The one-line error for a damaged archive: bad input for the user's own file, a failure for a download."""
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return (InputError if user_file else RuntimeFailure)(f"archive {path} is truncated or corrupt ({text})", fix)


def open_archive(path: Path, corrupt_fix: str, user_file: bool = False) -> Archive:
    """List a zip or tar (gz/bz2/xz) archive and check every entry; refuse unknown formats."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = [_zip_member(i, path) for i in zf.infolist()]
            kind = "zip"
        elif _is_tar(path):
            with tarfile.open(path, "r:*") as tf:  # a full pass: tar has no index
                members = [_tar_member(i, path) for i in tf]
            kind = "tar"
        else:
            raise corrupt(path, "neither a zip nor a tar archive", corrupt_fix, user_file)
    except _CORRUPT as exc:
        raise corrupt(path, exc, corrupt_fix, user_file) from None
    _check_duplicates(members, path)
    return Archive(path, kind, members, corrupt_fix, user_file)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except _CORRUPT:
        return False


@contextmanager
def _reader(archive: Archive) -> Iterator[Callable[[Member], IO[bytes]]]:
    if archive.kind == "zip":
        with zipfile.ZipFile(archive.path) as zf:
            yield lambda m: zf.open(m.ref)  # type: ignore[arg-type]
    else:
        with tarfile.open(archive.path, "r:*") as tf:
            def open_member(m: Member) -> IO[bytes]:
                handle = tf.extractfile(m.ref)  # type: ignore[arg-type]
                if handle is None:
                    raise tarfile.ReadError(f"cannot read {m.name}")
                return handle
            yield open_member


def _inside(folder: Path, rel: str) -> Path:
    target = folder.joinpath(*rel.split("/"))
    if os.path.commonpath([os.path.abspath(target), os.path.abspath(folder)]) != os.path.abspath(folder):
        raise UnsafeArchive(f"entry {rel!r} would be written outside {folder}", "get the archive again from its source")
    return target


def extract(archive: Archive, plan: Iterable[tuple[Member, str]], folder: Path,
            advance: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Copy each ``(member, relative destination)`` of ``plan`` into ``folder``; returns (files, bytes).

    Members are read in archive order (a tar.gz is then read in one sequential pass). A damaged
    member (bad CRC, truncated stream) raises RuntimeFailure naming the archive; a full disk raises
    RuntimeFailure too, and the caller removes the half-written folder.
    """
    files = size = 0
    ordered = sorted(plan, key=lambda item: _position(item[0]))
    try:
        with _reader(archive) as open_member:
            for member, rel in ordered:
                target = _inside(folder, rel)
                if member.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_member(member) as src, open(target, "xb") as dst:  # "x": never follow or replace
                    shutil.copyfileobj(src, dst, CHUNK)
                files, size = files + 1, size + member.size
                if advance:
                    advance(1)
    except _CORRUPT as exc:
        raise corrupt(archive.path, exc, archive.corrupt_fix, archive.user_file) from None
    except FileExistsError as exc:
        raise UnsafeArchive(f"{archive.path} writes {exc.filename} twice", "get the archive again from its source") \
            from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RuntimeFailure(f"no space left on {folder.parent} while unpacking {archive.path.name}",
                                 "free disk space and run the same command again (finished tasks are kept)") from None
        raise
    return files, size


def _position(member: Member) -> int:
    ref = member.ref
    return int(getattr(ref, "header_offset", None) or getattr(ref, "offset", 0))
