"""`python -m vipamin_cli` and the `vipamin` console script."""

import sys

from .cli import main


def run() -> None:
    sys.exit(main(end_process=True))


if __name__ == "__main__":
    run()
