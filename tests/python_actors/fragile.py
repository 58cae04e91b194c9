"""An actor whose ``get_state`` or ``load_state`` raises while a flag file exists.

The flag files are ``<actor>.refuse-save`` and ``<actor>.refuse-load`` in the working
directory (``<actor>`` is ``$RESURGAM_ACTOR``), so a test can first take a checkpoint and
then make loading it fail, or make a checkpoint request fail and then succeed. The
state is one JSON value: ``set(value)`` and ``get()``.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import resurgam


def _flag(what: str) -> str:
    """The flag file's name for ``what`` ("save" or "load")."""
    return f"{os.environ['RESURGAM_ACTOR']}.refuse-{what}"


class Fragile:
    """One value; saving and loading fail on demand."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, value: Any) -> Any:
        """Sets the value; returns it."""
        self.value = value
        return value

    def get(self, _args: Any = None) -> Any:
        """The value."""
        return self.value

    def get_state(self) -> Dict[str, Any]:
        """The value, unless the save flag file exists (then raises)."""
        if os.path.exists(_flag("save")):
            raise RuntimeError(f"refusing to save ({_flag('save')} exists)")
        return {"value": self.value}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Takes the value back, unless the load flag file exists (then raises)."""
        if os.path.exists(_flag("load")):
            raise RuntimeError(f"refusing to load ({_flag('load')} exists)")
        self.value = state["value"]


if __name__ == "__main__":
    resurgam.serve(Fragile)
