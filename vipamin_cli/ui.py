"""Terminal output: progress bars and tables on stderr, so stdout stays clean for pipelines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from rich.console import Console
from rich.markup import escape as _escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def escape(text: object) -> str:
    """User text (paths, class, dataset and hub names) shown through rich: brackets stay literal."""
    return _escape(str(text))


@lru_cache(maxsize=1)
def err_console() -> Console:
    return Console(stderr=True)


def out_console() -> Console:
    """stdout; wide when piped so tables do not wrap inside logs."""
    import sys

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def quiet() -> bool:
    return os.environ.get("VIPAMIN_QUIET", "") not in ("", "0")


class Bar:
    """One progress task; ``advance(n, loss=0.1)`` moves it and shows live values."""

    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields: object) -> None:
        status = escape("  ".join(f"{k}={v}" for k, v in fields.items()))
        self._progress.update(self._task, advance=n, **({"status": status} if fields else {}))


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Bar]:
    """A rich progress bar on stderr (silent when VIPAMIN_QUIET is set)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=err_console(), disable=not enabled or quiet(), transient=False) as progress:
        task = progress.add_task(escape(description), total=total, status="")
        yield Bar(progress, task)


def info(message: str) -> None:
    if not quiet():
        err_console().print(message, highlight=False)
