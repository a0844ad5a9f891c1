"""The real `vipamin` entry point, run in the test's process: what the hostile-input, bad-input,
io-safety and predict walks call. Shared so every walk judges a command the same way."""

from __future__ import annotations

import signal
import sys
import traceback

import pytest


def run_entry(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int | str, str, str]:
    """``vipamin ARGS`` through :func:`vipamin_cli.cli.main`: (exit code, stdout, stderr). An exception
    that escapes main is a finding: the code is ``"raised"`` and the traceback goes to stderr, as the
    interpreter would show it. The SIGTERM handler main installs is put back."""
    from vipamin_cli.cli import main

    capsys.readouterr()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code: int | str = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # an escaping exception is a finding
        code = "raised"
        sys.stderr.write(traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int | str, err: str, expected: int = 2) -> str:
    """The rule for bad input: exit ``expected``, no traceback or internal error, exactly one line on
    stderr starting with ``error: ``; returns that line."""
    assert code == expected, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
