"""Terminal output: progress bars and tables on stderr, so stdout stays clean for pipelines.

This is the one place output is rendered, so it is the one place user text is kept literal: both
consoles print strings without rich markup (a path or class named ``[red]a`` or ``x[/y]`` is shown
as it is, never styled or refused), and styles are given as ``rich.text.Text`` or ``style=``. The
progress bar, whose columns are markup templates, escapes what it puts into them. stdout is guarded
(:func:`guarded_stdout`): a closed pipe (``vipamin ... | head``) ends the command quietly, and a full
disk behind ``> file`` is one line naming stdout.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from rich.console import Console
from rich.markup import escape as _escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import RuntimeFailure, VipaminError

BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what the shell reports for a Unix tool ended by a closed pipe
LOG_WIDTH = 160  # both consoles' width when writing to a file or pipe: tables do not wrap inside logs


def escape(text: object) -> str:
    """User text shown through the consoles: they print without markup, so it stays as it is. (Kept for
    callers written when the consoles parsed markup.)"""
    return str(text)


@lru_cache(maxsize=1)
def err_console() -> Console:
    """stderr; when it is a log file or pipe (and COLUMNS is unset) as wide as stdout's, not rich's 80."""
    wide = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=True, width=LOG_WIDTH if wide else None, markup=False, highlight=False)


def out_console() -> Console:
    """stdout; wide when piped so tables do not wrap inside logs."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else LOG_WIDTH, markup=False, highlight=False)


class StdoutClosed(VipaminError):
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do."""

    exit_code = BROKEN_PIPE_EXIT


class _GuardedStdout:
    """sys.stdout with its write errors turned into one-line errors."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _fail(self, exc: OSError) -> VipaminError:
        _silence(self._stream)  # what is still buffered would fail again when the interpreter exits
        if exc.errno == errno.EPIPE:
            return StdoutClosed("stdout was closed")
        return RuntimeFailure(f"cannot write the output to stdout: {exc.strerror or exc}",
                              "free disk space where stdout is redirected, or redirect it elsewhere")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._fail(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._fail(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence(stream: Any) -> None:
    """Point the failed stream's file descriptor at /dev/null, so the interpreter's last flush does not
    fail again (and print "Exception ignored") after the one-line error."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


@contextmanager
def guarded_stdout() -> Iterator[None]:
    """Run a command with stdout guarded (see :class:`_GuardedStdout`)."""
    original = sys.stdout
    if isinstance(original, _GuardedStdout) or original is None:
        yield
        return
    sys.stdout = _GuardedStdout(original)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _GuardedStdout):
            sys.stdout = original


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def quiet() -> bool:
    return os.environ.get("VIPAMIN_QUIET", "") not in ("", "0")


class Bar:
    """One progress task; ``advance(n, loss=0.1)`` moves it and shows live values."""

    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        status = _escape("  ".join(f"{k}={v}" for k, v in fields.items()))  # the column is a markup template
        self._progress.update(self._task, advance=n, **({"status": status} if fields else {}))


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Bar]:
    """A rich progress bar on stderr (silent when VIPAMIN_QUIET is set)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    # rich sends what is printed to stdout during a live bar through the bar's console, which is stderr:
    # right when both are one terminal, but rows meant for `> file` or `| head` would land on the terminal
    with Progress(*columns, console=err_console(), disable=not enabled or quiet(), transient=False,
                  redirect_stdout=_is_terminal(sys.stdout)) as progress:
        task = progress.add_task(_escape(description), total=total, status="")
        yield Bar(progress, task)


def info(message: object, style: str | None = None) -> None:
    """A note on stderr (silent under VIPAMIN_QUIET): printed literally, in ``style`` if given."""
    if not quiet():
        err_console().print(message, style=style, highlight=False, soft_wrap=True)  # one line: grep-able logs
