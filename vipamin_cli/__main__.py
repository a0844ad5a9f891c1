"""`python -m vipamin_cli` and the `vipamin` console script."""

import contextlib
import os
import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:  # Ctrl-C while the command line itself loads
        sys.stderr.write("error: interrupted\n")
        os._exit(130)
    code = main(end_process=True)
    if code == 130:  # Ctrl-C: end now, even if a worker thread is still blocked in a read
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
