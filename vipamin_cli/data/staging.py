"""Install a task folder all at once: unpack into a marked temporary folder, rename it into place when done.

``vipamin data get`` may be stopped at any moment (Ctrl-C, ``kill -9``, a full disk). So a task is
unpacked into ``ROOT/.vipamin-get.<task>.<id>.tmp/`` (tagged with a ``.vipamin-get-partial`` file, so
it is provably ours), and only when every file is written does a record ``.vipamin-get.json`` go in
and the folder get renamed to ``ROOT/<folder>``. A task folder holding that record is therefore
complete; one without it was not made by us and is never deleted. Leftover temporary folders of a
stopped run carry our tag and are removed by the next run. One run at a time per root (a lock file).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vipamin_cli.errors import InputError, RuntimeFailure

RECORD = ".vipamin-get.json"  # in a finished task folder: what was unpacked, from where
PARTIAL = ".vipamin-get-partial"  # in a temporary folder of ours
PREFIX = ".vipamin-get."
LOCK = ".vipamin-get.lock"
TOOL = "vipamin data get"


def read_record(folder: Path) -> dict[str, Any] | None:
    """Our record of a finished task folder, or None if the folder is not one of ours."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("tool") == TOOL and isinstance(record.get("files"), int)
    return record if ok else None


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

    A run killed between creating its folder and tagging it leaves an empty folder with our name:
    that one is removed with rmdir, which cannot delete anything.
    """
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if _is_our_temp(entry):
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

    handle = open(root / LOCK, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"another `vipamin data get` is writing into {root}",
                             "wait for it to finish, or use another --root") from None
        yield
    finally:
        handle.close()


@contextmanager
def staging(root: Path, folder: str) -> Iterator[Path]:
    """A fresh temporary folder of ours inside ``root``; removed again if the block fails or is interrupted."""
    tmp = root / f"{PREFIX}{folder}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.mkdir()
        (tmp / PARTIAL).write_text(f"temporary folder of {TOOL}; safe to delete\n", encoding="utf-8")
    except OSError as exc:
        raise RuntimeFailure(f"cannot create a folder in {root}: {exc.strerror}",
                             "free disk space or choose a writable --root") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    path = folder / RECORD
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"tool": TOOL, **record}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def commit(tmp: Path, root: Path, folder: str, record: dict[str, Any]) -> Path:
    """Write the record into ``tmp`` and rename it to ``root/folder`` (replacing a folder of ours only)."""
    dest = root / folder
    _write_record(tmp, record)
    old = None
    if os.path.lexists(dest):
        if state(root, folder) != "ours":  # checked before, but the folder may have appeared since
            raise InputError(f"{dest} exists and was not made by `{TOOL}`", "move it away, or pick another --root")
        old = root / f"{PREFIX}{folder}.{uuid.uuid4().hex[:12]}.old"
        os.replace(dest, old)
    os.replace(tmp, dest)
    (dest / PARTIAL).unlink(missing_ok=True)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
