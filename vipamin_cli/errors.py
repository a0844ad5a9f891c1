"""User-facing errors: one line that names the bad input and the fix, never a traceback."""

from __future__ import annotations


class VipaminError(Exception):
    """A failure the user can act on. ``exit_code`` 2 = bad input/usage, 1 = runtime failure."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class InputError(VipaminError):
    """Bad input: a missing path, a corrupt file, an invalid option value (exit code 2)."""

    exit_code = 2


class ArtifactError(InputError):
    """An artifact that is missing, corrupt, of the wrong kind or mismatched with its peers."""


class RuntimeFailure(VipaminError):
    """Something went wrong while running (NaN loss, disk full, device error): exit code 1."""

    exit_code = 1


class Interrupted(VipaminError):
    """Ctrl-C or SIGTERM: stopped cleanly; the message says what was kept and how to go on."""

    exit_code = 130


def unwrap_worker_error(exc: VipaminError) -> VipaminError:
    """A DataLoader worker re-raises our error with the worker's whole traceback as its message:
    recover the original one-line message, so ``--workers N`` fails exactly like ``--workers 0``."""
    text = exc.message
    if "Original Traceback" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name = type(exc).__name__
    for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            last = last[len(prefix):]
            break
    return type(exc)(last)
