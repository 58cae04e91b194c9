"""An actor whose state is one large ``bytes`` value (passed through the SDK as is).

``fill({"mib": n, "seed": s})`` replaces the state with ``n`` MiB of bytes drawn from a
seeded generator and returns their digest; ``digest()`` returns ``{"len", "sha256"}``
of the current state, so a test can check that a restored state is bit for bit the one
that was saved.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Dict

import resurgam


class Blob:
    """Opaque bytes."""

    def __init__(self) -> None:
        self.data = b""

    def fill(self, args: Dict[str, int]) -> Dict[str, Any]:
        """Replaces the state with ``args["mib"]`` MiB of seeded random bytes."""
        self.data = random.Random(args["seed"]).randbytes(args["mib"] << 20)
        return self.digest()

    def digest(self, _args: Any = None) -> Dict[str, Any]:
        """Length and SHA-256 (hex) of the state."""
        return {"len": len(self.data), "sha256": hashlib.sha256(self.data).hexdigest()}

    def get_state(self) -> bytes:
        """The bytes themselves."""
        return self.data

    def load_state(self, state: bytes) -> None:
        """Takes back bytes returned by :meth:`get_state`."""
        self.data = state


if __name__ == "__main__":
    resurgam.serve(Blob)
