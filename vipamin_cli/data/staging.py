"""Install a task folder all at once: unpack into a marked temporary folder, rename it into place when done.

``vipamin data get`` may be stopped at any moment (Ctrl-C, ``kill -9``, a full disk). So a task is
unpacked into ``ROOT/.vipamin-get.<task>.<id>.tmp/`` (tagged with a ``.vipamin-get-partial`` file, so
it is provably ours), and only when every file is written does a record ``.vipamin-get.json`` go in
and the folder get renamed to ``ROOT/<folder>``. A task folder holding that record is therefore
complete; one without it was not made by us and is never deleted. The record lists every file the
folder was made with: ``--overwrite`` replaces a folder only while it holds nothing else (as
:mod:`vipamin_cli.iosafety` rules, vipamin deletes only what it can prove it made), and the old folder is
removed file by file from that list. Leftover temporary folders of a stopped run carry our tag and are
removed by the next run. One run at a time per root (a lock file, never followed through a link).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vipamin_cli import iosafety
from vipamin_cli.errors import InputError, RuntimeFailure
from vipamin_cli.iosafety import Output, check_input, listing, open_lock, remove_listed, unlisted

RECORD = ".vipamin-get.json"  # in a finished task folder: what was unpacked, from where
PARTIAL = ".vipamin-get-partial"  # in a temporary folder of ours
PREFIX = ".vipamin-get."
LOCK = ".vipamin-get.lock"
TOOL = "vipamin data get"


def read_record(folder: Path) -> dict[str, Any] | None:
    """Our record of a finished task folder, or None if the folder is not one of ours (a record that is a
    link, a FIFO or damaged is not ours either: it is never opened through the gate's refusal)."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        if (folder / RECORD).is_symlink():
            return None
        check_input(folder / RECORD, "task record", own=True)
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError, InputError):
        return None
    ok = isinstance(record, dict) and record.get("tool") == TOOL and isinstance(record.get("files"), int)
    return record if ok else None


def listed(record: dict[str, Any]) -> list[str] | None:
    """The files a record says its folder was made with (None: a record without a valid listing)."""
    files = record.get("listing")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def check_replaceable(folder: Path) -> list[str]:
    """Our finished ``folder`` may be replaced only while every entry in it is one its record lists;
    returns that listing, else refuses naming the first other file (which would be deleted)."""
    record = read_record(folder)
    files = listed(record) if record is not None else None
    if files is None:
        raise InputError(f"{folder / RECORD} lists no files, so vipamin cannot tell which files in {folder} it "
                         "made", "move that folder away (or delete it yourself), then run the same command again")
    extra = unlisted(folder, [*files, RECORD])
    if extra is not None:
        raise InputError(f"{folder / extra} is not one of the files `{TOOL}` unpacked into {folder}; --overwrite "
                         "would delete it", "move that file out of the folder, or pick another --root")
    return files


def state(root: Path, folder: str) -> str:
    """``absent``, ``ours`` (finished by `data get`) or ``foreign`` (anything else at that path)."""
    path = root / folder
    if not os.path.lexists(path):
        return "absent"
    return "ours" if read_record(path) is not None else "foreign"


def _is_our_temp(path: Path) -> bool:
    return (path.name.startswith(PREFIX) and path.name.endswith((".tmp", ".old")) and not path.is_symlink()
            and path.is_dir() and ((path / PARTIAL).is_file() or read_record(path) is not None))


def clean_stale(root: Path) -> list[str]:
    """Remove the temporary folders a stopped run left behind (only ours); returns their names.

    An unfinished one (tagged, only files this command unpacked into a folder it made) goes whole; a
    finished one moved aside for ``--overwrite`` goes file by file from its record. A run killed
    between creating its folder and tagging it leaves an empty folder with our name: that one is
    removed with rmdir, which cannot delete anything.
    """
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if _is_our_temp(entry):
            record = read_record(entry)
            files = listed(record) if record is not None else None
            if files is not None:
                if remove_listed(entry, [*files, RECORD, PARTIAL], f"the replaced folder {entry.name}"):
                    removed.append(entry.name)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        elif entry.name.startswith(PREFIX) and entry.name.endswith(".tmp") and not entry.is_symlink():
            try:
                entry.rmdir()
                removed.append(entry.name)
            except OSError:  # not empty, or not a folder: not provably ours, left alone
                pass
    return removed


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One `data get` per root at a time: a second one would remove the first one's temporary folders."""
    import fcntl

    path = root / LOCK
    out = Output(path, "--root", "the lock file", source="inside --root")
    fd = open_lock(path, out, pid_file=False)  # never through a link, never a FIFO
    if fd is None:
        raise InputError(f"cannot create the lock file {path}", "point --root at a directory you can write to")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"another `vipamin data get` is writing into {root}",
                             "wait for it to finish, or use another --root") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def staging(root: Path, folder: str) -> Iterator[Path]:
    """A fresh temporary folder of ours inside ``root``; removed again if the block fails or is interrupted."""
    tmp = root / f"{PREFIX}{folder}.{uuid.uuid4().hex[:12]}.tmp"
    iosafety.listed_temp(tmp, "tree")  # before it exists: a Ctrl-C at any point after cannot leave it behind
    try:
        tmp.mkdir()
    except OSError as exc:
        iosafety.settle(tmp)
        raise _cannot_create(root, exc) from None
    try:
        try:
            (tmp / PARTIAL).write_text(f"temporary folder of {TOOL}; safe to delete\n", encoding="utf-8")
        except OSError as exc:
            raise _cannot_create(root, exc) from None
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        iosafety.settle(tmp)
        raise


def _cannot_create(root: Path, exc: OSError) -> RuntimeFailure:
    return RuntimeFailure(f"cannot create a folder in {root}: {exc.strerror}",
                          "free disk space or choose a writable --root")


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    path = folder / RECORD
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"tool": TOOL, **record}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def commit(tmp: Path, root: Path, folder: str, record: dict[str, Any]) -> Path:
    """Write the record (with the listing of every file unpacked) into ``tmp`` and rename it to
    ``root/folder``, replacing a folder of ours only, and only while it holds nothing but its listed files."""
    dest = root / folder
    files, _ = listing(tmp)
    _write_record(tmp, {**record, "listing": sorted(f for f in files if f != PARTIAL)})
    (tmp / PARTIAL).unlink()  # its record marks it ours from here on (see clean_stale)
    old, remove_old = None, None
    if os.path.lexists(dest):
        if state(root, folder) != "ours":  # checked before, but the folder may have appeared since
            raise InputError(f"{dest} exists and was not made by `{TOOL}`", "move it away, or pick another --root")
        previous = check_replaceable(dest)  # checked before too; a file may have been added since
        old = root / f"{PREFIX}{folder}.{uuid.uuid4().hex[:12]}.old"
        remove_old = functools.partial(remove_listed, old, [*previous, RECORD], f"the replaced {folder}")
    iosafety.swap_folder(tmp, dest, old, remove_old)
    return dest
