"""The ``lakehouse`` command: thin argv parsing, then a call into the ``lakehouse`` package."""

from __future__ import annotations

import sys

from lakehouse.cli import run


def main() -> None:
    """Entry point of the ``lakehouse`` console script."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
