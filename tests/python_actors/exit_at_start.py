"""A program that exits with status 4 before it says hello: a crash loop."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.stderr.write("exit_at_start: giving up at once\n")
    sys.exit(4)
