"""One gate for every path a command reads or writes: no output destroys an input, nothing blocks on a FIFO.

Each command runs inside a :func:`command_scope` (``cli.handle_errors`` opens it, and so do the library
entry points, so a Python caller gets the same checks). Inside it:

- every file a command reads passes :func:`check_input`, which refuses a FIFO, device or socket before
  it is opened (opening a FIFO blocks until a writer comes) and records the file's identity
  (``st_dev``, ``st_ino``); the images of a data set are recorded by :func:`declare_input_set`;
- every path it writes is declared by :func:`declare_output` (a file) or :func:`declare_output_dir`
  (a folder), which refuses a symlink, a FIFO, a device or a directory in its place, a name longer
  than the file system allows, and a path that is the same file as one of the inputs or as another
  output given by another option;
- the two are compared whichever comes first, so the check happens as soon as both are known, before
  the heavy work; files the command wrote itself, and its own state files (resume state, lock,
  records) read back, are not inputs;
- :func:`artifacts.atomic_path` writes through a short temporary name (``.vp-XXXXXXXX.tmp``, so a legal
  long ``--out`` still works), never follows a symlink, and turns a full disk or a read-only folder
  into one line that names the option the path came from (:func:`write_failure`);
- every temporary file or folder is listed (:func:`temp_file`, :func:`temp_dir`) before it is created and
  until it is renamed into place, and the command's scope removes whatever is still listed when it ends,
  so a Ctrl-C at any statement leaves no temporary behind; :func:`swap_folder` replaces a folder by two
  renames (the old one moved aside, the new one moved in) that :func:`shielded` keeps from being split.

``PATH_OPTIONS`` lists, per command, every option or argument that names a path and what it is; the
tests walk the command tree and refuse a command whose path options are not listed here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, RuntimeFailure, VipaminError

# Every option or argument of every command that names a path: "input" (read), "output" (a file
# written), "output-dir" (a folder written into), "cache" (the embeddings cache), "none" (a name
# that is not a path). tests/test_io_safety.py checks this against the command tree.
PATH_OPTIONS: dict[str, dict[str, str]] = {
    "embed": {"--data": "input", "--weights": "input", "--out": "output", "--cache-dir": "cache"},
    "init": {"--embeddings": "input", "--data": "input", "--weights": "input", "--out": "output",
             "--cache-dir": "cache"},
    "explain": {"PROMPTS": "input", "--png": "output"},
    "tune": {"--embeddings": "input", "--data": "input", "--weights": "input", "--val-embeddings": "input",
             "--final-embeddings": "input", "--prompts": "input", "--out": "output", "--cache-dir": "cache"},
    "eval": {"--checkpoint": "input", "--embeddings": "input", "--data": "input", "--weights": "input",
             "--out": "output", "--plot": "output", "--cache-dir": "cache"},
    "info": {"FILE": "input"},
    "benchmark": {"--root": "input", "--weights": "input", "--out": "output-dir", "--cache-dir": "cache"},
    "demo": {"--out": "output-dir"},
    "data make-testbed": {"DEST": "output-dir"},
    "data check": {"ROOT": "input"},
    "data get": {"--root": "output-dir", "--from": "input"},
    "predict": {"--checkpoint": "input", "--data": "input", "--weights": "input", "--out": "output"},
    "export": {"--checkpoint": "input", "--weights": "input", "--out": "output"},
}

TEMP_PREFIX = ".vp-"
TEMP_SUFFIX = ".tmp"
_LOCK_MAX = 64  # bytes of a lock file vipamin wrote: a pid and a newline


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


@dataclass
class Output:
    """A path the command writes. ``option`` is where it came from (``--out``, ``--png``, ``DEST``,
    ``VIPAMIN_CACHE``); ``role`` describes a file derived from it (``the resume state``), None for the
    option's own value."""

    path: Path
    option: str
    role: str | None = None
    ident: tuple[int, int] | None = None
    folder: bool = False
    source: str | None = None  # how a derived file relates to its option (default "from <option>")
    key: str = ""  # the spelling-independent path, computed once

    def __post_init__(self) -> None:
        if not self.key:
            self.key = os.path.realpath(self.path) if self.folder else _key(self.path)

    @property
    def who(self) -> str:
        if self.role is None:
            return f"{self.option} {self.path}"
        return f"{self.role} {self.path} ({self.source or 'from ' + self.option})"

    @property
    def fix_location(self) -> str:
        if _is_setting(self.option):
            return f"point {self.option} at a writable directory"
        return f"choose a writable {self.option} location"

    @property
    def fix_space(self) -> str:
        if _is_setting(self.option):
            return f"free disk space or point {self.option} at another directory"
        return f"free disk space or choose another {self.option} location"


def _is_setting(option: str) -> bool:
    """A cache setting (VIPAMIN_CACHE, the default cache folder) rather than a command-line path."""
    return option.startswith("VIPAMIN_") or option == "the cache directory"


@dataclass
class _InputSet:
    """The images of one data set: stat'ed only when an existing output must be compared with them."""

    owner: str  # "--data <root>"
    root: str
    keys: list[str]
    idents: dict[tuple[int, int], str] | None = None

    def identities(self) -> dict[tuple[int, int], str]:
        if self.idents is None:
            self.idents = {}
            for key in self.keys:
                ident = _ident(os.path.join(self.root, key))
                if ident is not None:
                    self.idents.setdefault(ident, key)
        return self.idents


@dataclass
class Scope:
    """The reads and writes of one command."""

    inputs: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)  # ident -> (what, path)
    sets: list[_InputSet] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    ours: set[tuple[int, int]] = field(default_factory=set)  # files this command wrote
    active: list[Output] = field(default_factory=list)  # writes in progress (innermost last)


_SCOPES: list[Scope] = []


def current() -> Scope | None:
    return _SCOPES[-1] if _SCOPES else None


@contextlib.contextmanager
def command_scope() -> Iterator[Scope]:
    """The scope of one command (reentrant: a library call inside a command joins the command's).
    Usable as a decorator on library entry points."""
    if _SCOPES:
        yield _SCOPES[-1]
        return
    scope = Scope()
    try:
        _SCOPES.append(scope)  # inside the try: a Ctrl-C just after it cannot leave a stale scope
        yield scope
    finally:
        _SCOPES.remove(scope)  # first, and one call: later commands in this process never join a dead scope
        with shielded():
            remove_pending()  # what an interrupted write left (see temp_file)


def _ident(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _key(path: Path) -> str:
    """A spelling-independent name for a path that may not exist yet."""
    parent = path.parent if str(path.parent) else Path(".")
    return os.path.join(os.path.realpath(parent), path.name)


# ----------------------------------------------------------------------------------------------------------
# Inputs


def check_input(path: str | os.PathLike, what: str, fix: str = "pass a regular file", *, own: bool = False,
                folder: bool = False, missing_fix: str = "check the path") -> os.stat_result:
    """The one gate before a file is opened: it must be a regular file (``folder``: a directory), so a
    FIFO never blocks a command; unless ``own`` (the command's own state), it is recorded as an input."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{what} not found: {path}", missing_fix) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}", "check the path and its permissions") from None
    if folder:
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{what} {path} is {kind_of(st.st_mode)}, not a folder", fix)
    elif stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} {path} is a directory, not a file", fix)
    elif not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file", fix)
    scope = current()
    if scope is not None and not own and not folder:
        _add_input(scope, (st.st_dev, st.st_ino), what, str(path))
    return st


def _add_input(scope: Scope, ident: tuple[int, int], what: str, path: str) -> None:
    if ident in scope.ours:
        return
    for out in scope.outputs:
        if out.ident == ident and out.role is None and not out.folder:
            raise _same_as_input(out, what, path)
    scope.inputs.setdefault(ident, (what, path))


def _same_as_input(out: Output, what: str, path: str) -> InputError:
    return InputError(f"{out.who} is the same file as the input {what} {path}; writing it would destroy the input",
                      f"choose another {out.option}")


def declare_input_set(owner: str, root: str | os.PathLike, keys: Iterable[str]) -> None:
    """The files of a data set (``keys`` relative to ``root``), read by the command."""
    scope = current()
    if scope is None:
        return
    entry = _InputSet(owner, str(root), list(keys))
    scope.sets.append(entry)
    for out in scope.outputs:
        _check_against_set(out, entry)


def _check_against_set(out: Output, entry: _InputSet) -> None:
    if out.ident is None or out.folder:
        return
    key = entry.identities().get(out.ident)
    if key is not None:
        raise InputError(f"{out.who} is the same file as the input image {key} of {entry.owner}; writing it would "
                         "destroy the input", f"choose another {out.option}")


def read_text(path: str | os.PathLike, what: str, fix: str, *, own: bool = False) -> str:
    """A text input, through the gate; a read or decoding failure is one line naming the file."""
    check_input(path, what, fix, own=own)
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {what} {path}: {reason}", fix) from None


def read_json(path: str | os.PathLike, what: str, fix: str, *, own: bool = False) -> Any:
    """A JSON input, through the gate; malformed JSON is one line naming the file and the fix."""
    import json

    text = read_text(path, what, fix, own=own)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{what} {path} is damaged (not valid JSON: {str(exc)[:80]})", fix) from None


# ----------------------------------------------------------------------------------------------------------
# Outputs


def _name_max(parent: Path) -> int:
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def declare_output(path: str | os.PathLike, option: str = "--out", role: str | None = None,
                   inputs: Iterable[tuple[str, str | os.PathLike | None]] = (), source: str | None = None) -> Path:
    """Check a path the command will write, before any work, and record it.

    Refused: an empty path, a name longer than the file system allows, an existing directory,
    symlink, FIFO or device in its place, the same file as one of ``inputs`` or of the inputs read
    so far, and the same file as another option's output (``eval --out X --plot X``).
    """
    p = Path(path)
    out = Output(p, option, role, source=source)
    if not str(path).strip():
        raise InputError(f"{option} is empty", f"pass {option} FILE")
    parent = p.parent if str(p.parent) else Path(".")
    limit = _name_max(parent)
    if len(os.fsencode(p.name)) > limit:
        raise InputError(f"the file name of {out.who} is {len(os.fsencode(p.name))} bytes, more than the {limit} "
                         "its file system allows", f"choose a shorter {option}")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot write to {p.parent}: {exc.strerror}", out.fix_location) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            fix = (f"pass a file path, e.g. {option} {p / 'out.safetensors'}" if role is None
                   else f"remove it or choose another {option}")
            raise InputError(f"{out.who} is a directory", fix)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{out.who} exists and is {kind_of(st.st_mode)}; vipamin only replaces regular files",
                             f"remove it or choose another {option}")
        out.ident = (st.st_dev, st.st_ino)
    for name, other in inputs:
        if other is not None and _same_path(p, Path(other)):
            raise _same_as_input(out, name, str(other))
    scope = current()
    if scope is not None:
        _register_output(scope, out)
    return p


def _same_path(a: Path, b: Path) -> bool:
    ia, ib = _ident(a), _ident(b)
    if ia is not None and ib is not None:
        return ia == ib
    return _key(a) == _key(b)


def _register_output(scope: Scope, out: Output) -> None:
    for other in scope.outputs:
        same = (other.ident == out.ident) if (other.ident and out.ident) else other.key == out.key
        if not same or other.folder:
            continue
        if (other.option, other.role) == (out.option, out.role) or other.role is not None or out.role is not None:
            return  # the same output declared again (or a derived file of another step): one record
        raise InputError(f"{out.who} is the same file as {other.who}; one would overwrite the other",
                         f"choose another {out.option}")
    if out.ident is not None and out.ident not in scope.ours:
        if out.ident in scope.inputs:
            what, where = scope.inputs[out.ident]
            raise _same_as_input(out, what, where)
        for entry in scope.sets:
            _check_against_set(out, entry)
    scope.outputs.append(out)


def declare_output_dir(path: str | os.PathLike, option: str, *, replace: bool = False) -> Path:
    """A folder the command writes into (created if absent): not a file, and with ``replace`` (the folder
    itself is swapped) not a symlink either."""
    p = Path(path)
    if not str(path).strip():
        raise InputError(f"{option} is empty", f"pass {option} FOLDER")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot write to {p}: {exc.strerror}", f"choose a writable {option} location") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if replace:
            raise InputError(f"{option} {p} is a symbolic link; vipamin replaces the folder itself and never follows "
                             "a link there", f"pass the folder it points to ({os.path.realpath(p)}) or a new one")
        try:
            st = os.stat(p)
        except OSError:
            raise InputError(f"{option} {p} is a broken symbolic link", f"remove it or choose another {option}") \
                from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{option} {p} is {'a file' if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)}, "
                         "not a folder", f"pass a folder (it is created if absent), or remove {p}")
    scope = current()
    if scope is not None:
        scope.outputs.append(Output(p, option, folder=True))
    return p


def find_output(path: str | os.PathLike) -> Output | None:
    """The declared output ``path`` is (or lies inside, for a declared folder), without declaring anything."""
    scope = current()
    if scope is None:
        return None
    p = Path(path)
    key = _key(p)
    for out in reversed(scope.outputs):
        if not out.folder and out.key == key:
            return out
    for out in reversed(scope.outputs):
        if out.folder and (key == out.key or key.startswith(out.key.rstrip(os.sep) + os.sep)):
            return Output(p, out.option, "the file")
    return None


def output_for(path: str | os.PathLike, what: str | None = None) -> Output:
    """The declared output ``path`` belongs to, or a new record (option ``what``, default ``--out``; inside
    a declared folder, that folder's option) checked like a declared one."""
    found = find_output(path)
    if found is not None and found.role != "the file":
        return found
    return _checked(found or Output(Path(path), what or "--out"))


def _checked(out: Output) -> Output:
    declare_output(out.path, out.option, out.role)
    scope = current()
    if scope is not None:
        for o in reversed(scope.outputs):
            if o.key == out.key and not o.folder:
                return o
    return out


def mark_written(path: str | os.PathLike) -> None:
    """A file this command wrote: reading it back later is not reading an input."""
    scope = current()
    ident = _ident(path)
    if scope is not None and ident is not None:
        scope.ours.add(ident)


@contextlib.contextmanager
def writing(out: Output) -> Iterator[Output]:
    """A write in progress: an OSError raised inside becomes one line naming ``out`` (and its option)."""
    scope = current()
    if scope is not None:
        scope.active.append(out)
    try:
        yield out
    except OSError as exc:
        raise write_failure(exc, out) from None
    finally:
        if scope is not None and out in scope.active:
            scope.active.remove(out)


def write_failure(exc: OSError, out: Output, dest: Path | None = None) -> VipaminError:
    """An OSError while writing ``out`` as one line: full disk (exit 1), read-only or forbidden folder (2)."""
    dest = dest or out.path
    parent = dest.parent if str(dest.parent) else Path(".")
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return RuntimeFailure(f"no space left on {parent} (writing {dest})", out.fix_space)
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return InputError(f"cannot write {out.who}: {exc.strerror}", out.fix_location)
    if code == errno.ENAMETOOLONG:
        return InputError(f"cannot write {out.who}: {exc.strerror}", f"choose a shorter {out.option}")
    return RuntimeFailure(f"cannot write {out.who}: {exc.strerror or exc}", out.fix_space)


def os_error_line(exc: OSError) -> VipaminError | None:
    """The last resort for an OSError no write path caught (``handle_errors``): one line naming the file
    (and the option, when it is a declared output), or None for an error that is not about a file."""
    name = exc.filename
    out = find_output(name) if name is not None else None
    if out is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                         errno.ENAMETOOLONG, errno.EIO, errno.EFBIG):
        return write_failure(exc, out, Path(name) if name else None)
    if name is not None:
        return InputError(f"cannot use {name}: {exc.strerror or exc}", "check the path, its permissions and free space")
    return None


def check_not_read(dest: Path, out: Output) -> None:
    """Just before a write lands on ``dest``: it is still none of the files the command has read (an input
    read after the output was declared, e.g. a weights file named in the checkpoint's metadata)."""
    scope = current()
    ident = _ident(dest)
    if scope is None or ident is None or ident in scope.ours:
        return
    if ident in scope.inputs:
        what, where = scope.inputs[ident]
        raise _same_as_input(out, what, where)
    checked = Output(dest, out.option, out.role, ident=ident, source=out.source)
    for entry in scope.sets:
        _check_against_set(checked, entry)


# ----------------------------------------------------------------------------------------------------------
# Deleting only what the command can prove it made


def listing(root: Path) -> tuple[list[str], list[str]]:
    """Every file (and non-folder entry) and every folder under ``root``, relative, links not followed."""
    files, folders = [], []
    for here, dirs, names in os.walk(root, followlinks=False):
        rel = Path(here).relative_to(root)
        for d in list(dirs):
            if os.path.islink(os.path.join(here, d)):
                dirs.remove(d)
                files.append((rel / d).as_posix())
            else:
                folders.append((rel / d).as_posix())
        files += [(rel / n).as_posix() for n in names]
    return files, folders


def unlisted(root: Path, listed: Iterable[str]) -> str | None:
    """The first entry under ``root`` that is not in ``listed`` (or is a link / not a regular file there):
    what a folder holds beyond the record its maker kept, so it is not provably the maker's."""
    known = set(listed)
    files, _ = listing(root)
    for rel in sorted(files):
        path = root / rel
        if rel not in known or os.path.islink(path) or not path.is_file():
            return rel
    return None


def remove_listed(root: Path, files: Iterable[str], what: str) -> bool:
    """Delete the listed files under ``root``, then the folders they leave empty, then ``root``; anything
    else stays, and a note says where (``what`` names the folder). True when ``root`` is gone."""
    for rel in files:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (root / rel).unlink()
    _, folders = listing(root)
    for rel in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            (root / rel).rmdir()
    try:
        root.rmdir()
    except OSError:
        from .ui import info

        info(f"note: {what} was moved to {root}; some files there were not vipamin's, so they were kept")
        return False
    return True


# ----------------------------------------------------------------------------------------------------------
# Safe creation: temporary files and locks


# Temporary files and folders this process made (or is about to make) and has not yet renamed into place
# or removed: path -> "file", "tree" (a folder of our own files), "empty" (a folder removed only while
# empty) or a function that removes it (an old folder moved aside, removed file by file). A name is
# listed before it is created, so an interrupt between any two statements leaves it listed, and the
# command's scope removes it (see command_scope).
_PENDING: dict[Path, str | Callable[[], object]] = {}


def _temp_name(parent: Path, suffix: str) -> Path:
    return parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}{suffix}"


def temp_file(parent: Path) -> tuple[int, Path]:
    """Create a new temporary file in ``parent`` with a short name (``.vp-XXXXXXXX.tmp``): O_EXCL, never
    through a symlink, mode 0600, listed until :func:`settle`. Returns the open descriptor and the path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return _new_temp(parent, TEMP_SUFFIX, "file", lambda path: os.open(path, flags, 0o600))


def temp_dir(parent: Path, suffix: str = TEMP_SUFFIX, *, empty: bool = False) -> Path:
    """Create a new temporary folder in ``parent`` (``.vp-XXXXXXXX<suffix>``, mode 0700), listed until
    :func:`settle`. ``empty``: a folder that only receives a rename (an old folder moved aside); left
    over, it is removed only while empty, so what was moved into it is never deleted."""
    return _new_temp(parent, suffix, "empty" if empty else "tree", lambda path: os.mkdir(path, 0o700))[1]


def _new_temp(parent: Path, suffix: str, kind: str, create: Callable[[Path], Any]) -> tuple[Any, Path]:
    """``create`` a fresh name, listed before it exists; a name another process holds is never listed."""
    for _ in range(100):
        path = _temp_name(parent, suffix)
        _PENDING[path] = kind
        try:
            return create(path), path
        except FileExistsError:  # another process's name: never ours to remove
            _PENDING.pop(path, None)
        except OSError:
            _PENDING.pop(path, None)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def listed_temp(path: Path, kind: str | Callable[[], object]) -> None:
    """List a temporary of a caller's own naming (before creating it), or change how a listed one is
    removed (``kind`` as in ``_PENDING``): removed with the others if the command ends first."""
    _PENDING[path] = kind


def settle(path: Path) -> None:
    """``path`` was renamed into place or removed: no longer a temporary to clean up."""
    _PENDING.pop(path, None)


def remove_pending() -> None:
    """Remove every temporary still listed (an interrupted write): files unlinked, our folders removed
    whole, folders that only received a rename removed only while empty; links never followed."""
    for path, kind in list(_PENDING.items()):
        with contextlib.suppress(OSError):
            if callable(kind):
                kind()
            elif kind == "file" or os.path.islink(path):
                path.unlink(missing_ok=True)
            elif kind == "tree":
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.rmdir()
        _PENDING.pop(path, None)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then hand them to the handlers they would have met
    (usually a KeyboardInterrupt): for steps that must not be split, such as the two renames that swap a
    folder. Only Python handlers in the main thread can be held; elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if callable(handler)}
    try:
        for sig in previous:
            signal.signal(sig, lambda signum, frame: held.append(signum))
        yield
    finally:
        for sig, handler in reversed(previous.items()):  # SIGINT last: until then a Ctrl-C is still held
            signal.signal(sig, handler)
    for signum in held[:1]:
        previous[signum](signum, None)


def swap_folder(new: Path, dest: Path, aside: Path | None = None,
                remove_aside: Callable[[], object] | None = None) -> None:
    """Rename the finished folder ``new`` onto ``dest``. With ``aside`` (a free name, or an empty folder of
    ours), the folder at ``dest`` moves there first and ``remove_aside`` removes it afterwards (it deletes
    only what its maker can prove it made). The renames are one step for Ctrl-C (:func:`shielded`) and
    the first is undone if the second fails, so ``dest`` is always the old folder or the new one, whole;
    an interrupted removal is finished by the command's scope."""
    with shielded():
        if aside is not None:
            os.replace(dest, aside)
            listed_temp(aside, remove_aside or "empty")
        try:
            os.replace(new, dest)
        except OSError:
            if aside is not None:
                os.replace(aside, dest)
                settle(aside)
            raise
        settle(new)
    _fsync_dir(dest.parent)
    if aside is not None:
        if remove_aside is not None:
            remove_aside()
        settle(aside)


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable where the file system allows it (best effort)."""
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


def check_replaceable(dest: Path, out: Output) -> None:
    """Just before a rename onto ``dest``: it must be absent or a regular file (never a link or a FIFO)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{out.who} exists and is {kind_of(st.st_mode)}; vipamin only replaces regular files",
                         f"remove it or choose another {out.option}")


def open_lock(path: Path, out: Output, *, pid_file: bool) -> int | None:
    """Open (or create) a lock file without following a symlink. ``pid_file``: vipamin writes its pid into
    it, so an existing file must look like one of its own locks (a pid, or empty), else it is refused
    rather than truncated. Returns None where no lock can be made (a read-only folder)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        return fd
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not pid_file:
            return None
        raise write_failure(exc, out, path) from None
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{out.who} is a symbolic link; vipamin never writes through a link",
                             f"remove it, or choose another {out.option}") from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not pid_file:
            with contextlib.suppress(OSError):
                return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            return None
        raise write_failure(exc, out, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{out.who} exists and is {kind_of(st.st_mode)}; vipamin only uses regular files as locks",
                         f"remove it, or choose another {out.option}")
    if pid_file:
        text = os.pread(fd, _LOCK_MAX + 1, 0)
        if len(text) > _LOCK_MAX or not text.strip().isdigit() and text.strip():
            os.close(fd)
            raise InputError(f"{out.who} exists and is not a vipamin lock file (it holds other data); vipamin "
                             "would overwrite it", f"move it away, or choose another {out.option}")
    return fd


def remove_own_lock(path: Path, fd: int) -> None:
    """Remove a lock file only if it is still the one this process holds open (same inode)."""
    try:
        if os.fstat(fd).st_ino == os.lstat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
