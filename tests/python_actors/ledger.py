"""An append-only ledger for the exactly-once tests.

``append(item)`` returns the ledger's length after the append, which is the item's
1-based position: a client that got reply ``n`` for an item finds it at index ``n - 1``
of ``get()`` if and only if the call was applied once, in order. ``version()`` reports
the program's arguments and ``$LEDGER_TAG``, to see which launch settings are running.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import resurgam


class Ledger:
    """A list of JSON values, only ever appended to."""

    def __init__(self) -> None:
        self.items: List[Any] = []

    def append(self, item: Any) -> int:
        """Appends ``item``; returns the new length."""
        self.items.append(item)
        return len(self.items)

    def get(self, _args: Any = None) -> List[Any]:
        """The whole ledger, oldest first."""
        return self.items

    def len(self, _args: Any = None) -> int:
        """The number of items."""
        return len(self.items)

    def version(self, _args: Any = None) -> Dict[str, Optional[Any]]:
        """The program's arguments (after the script) and ``$LEDGER_TAG``."""
        return {"argv": sys.argv[1:], "tag": os.environ.get("LEDGER_TAG")}

    def get_state(self) -> List[Any]:
        """The items (pickled by the SDK)."""
        return self.items

    def load_state(self, state: List[Any]) -> None:
        """Takes back items returned by :meth:`get_state`."""
        self.items = list(state)


if __name__ == "__main__":
    resurgam.serve(Ledger)
