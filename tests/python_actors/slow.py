"""An actor whose calls take time, or return as much as asked: for hang detection and
reply limits.

``work({"ms": n})`` sleeps ``n`` milliseconds, counts the call and returns the count;
``count()`` returns it; ``big({"bytes": n})`` returns a string of ``n`` bytes (its JSON
encoding is ``n + 2`` bytes long).
"""

from __future__ import annotations

import time
from typing import Any, Dict

import resurgam


class Slow:
    """A counter of completed calls, each as slow as asked."""

    def __init__(self) -> None:
        self.done = 0

    def work(self, args: Dict[str, int]) -> int:
        """Sleeps ``args["ms"]`` milliseconds; returns how many calls completed."""
        time.sleep(args["ms"] / 1000)
        self.done += 1
        return self.done

    def count(self, _args: Any = None) -> int:
        """How many ``work`` calls completed."""
        return self.done

    def big(self, args: Dict[str, int]) -> str:
        """A string of ``args["bytes"]`` bytes."""
        return "x" * args["bytes"]

    def get_state(self) -> int:
        """The count."""
        return self.done

    def load_state(self, state: int) -> None:
        """Takes back a count returned by :meth:`get_state`."""
        self.done = state


if __name__ == "__main__":
    resurgam.serve(Slow)
