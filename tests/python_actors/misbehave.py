"""An actor that breaks the rules on request, to see resurgam recover from each breach.

The state is one integer, ``total`` (``add(n)`` and ``get()``). Each misbehaving method
takes ``{"marker": <file name>}`` or nothing:

* with a marker, it misbehaves only if that file does not exist yet, and creates it
  first: the attempt that misbehaves crashes the worker, and the replay of the same
  call after the restart behaves (returns ``total``), so the call itself succeeds;
* without one, it misbehaves every time (a *poison call*).

Misbehaviours: ``garbage`` writes a bad frame straight onto the protocol socket
(``"frame"`` picks which, see :data:`GARBAGE`), ``close_channel`` closes the socket and
sleeps, ``exit`` ends the process with ``os._exit(3)``, ``hang`` sleeps forever.
``chatty(text)`` prints ``text`` to stdout (allowed: stdout is never the protocol),
``blurt({"text": t, "bytes": n})`` writes ``t`` and ``n`` more bytes to stdout with no
newline (the line goes on until the next one), and
``fail(text)`` raises ``RuntimeError(text)`` (an ``ActorError``; the actor lives on).
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import Any, Dict, NoReturn, Optional

import resurgam

#: The protocol channel's file descriptor.
FD = int(os.environ.get("RESURGAM_FD", "3"))


def _frame(kind: bytes, body: bytes) -> bytes:
    """One protocol frame: type, big-endian length, body."""
    return kind + struct.pack(">I", len(body)) + body


#: Bad frames by name, each one a protocol violation when it answers a call.
GARBAGE: Dict[str, bytes] = {
    "unknown_type": _frame(b"Z", b"junk"),
    "state_for_a_call": _frame(b"T", b"not an answer to a call"),
    "reply_not_json": _frame(b"R", b"not json {"),
    "malformed_error": _frame(b"E", json.dumps({"oops": 1}).encode()),
    "second_hello": _frame(b"H", json.dumps({"protocol": 1}).encode()),
    # A header promising 4 GiB - 1 of reply, and no body.
    "oversized_reply": b"R" + struct.pack(">I", 0xFFFFFFFF),
}


def _misbehave_now(args: Optional[Dict[str, Any]]) -> bool:
    """Whether this attempt misbehaves: always without a marker; with one, only the
    first time (the marker file is created before the misbehaviour)."""
    marker = (args or {}).get("marker")
    if marker is None:
        return True
    try:
        with open(marker, "x", encoding="utf-8"):
            pass
    except FileExistsError:
        return False
    return True


def _sleep_forever() -> NoReturn:
    """Blocks until the process is killed."""
    while True:
        time.sleep(3600)


class Misbehave:
    """A running total, and methods that break the protocol on request."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> int:
        """Adds ``n`` to the total; returns it."""
        self.total += int(n)
        return self.total

    def get(self, _args: Any = None) -> int:
        """The total."""
        return self.total

    def chatty(self, text: str) -> int:
        """Prints ``text`` on stdout (flushed); returns the total."""
        print(text, flush=True)
        return self.total

    def blurt(self, args: Dict[str, Any]) -> int:
        """Writes ``args["text"]`` and ``args["bytes"]`` x's to stdout, no newline."""
        out = os.fdopen(os.dup(1), "wb")
        out.write(str(args["text"]).encode())
        chunk = b"x" * 65536
        left = int(args["bytes"])
        while left > 0:
            out.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        out.close()
        return self.total

    def fail(self, text: str) -> NoReturn:
        """Raises ``RuntimeError(text)``; the state is unchanged."""
        raise RuntimeError(text)

    def garbage(self, args: Dict[str, Any]) -> int:
        """Writes the bad frame ``GARBAGE[args["frame"]]`` onto the channel, then
        answers normally (too late: the worker has already stopped reading)."""
        if _misbehave_now(args):
            os.write(FD, GARBAGE[args["frame"]])
        return self.total

    def close_channel(self, args: Optional[Dict[str, Any]] = None) -> int:
        """Closes the protocol channel, then sleeps until killed."""
        if _misbehave_now(args):
            os.close(FD)
            _sleep_forever()
        return self.total

    def exit(self, args: Optional[Dict[str, Any]] = None) -> int:
        """Ends the process at once with status 3, mid-call."""
        if _misbehave_now(args):
            os._exit(3)
        return self.total

    def hang(self, args: Optional[Dict[str, Any]] = None) -> int:
        """Never returns (until killed)."""
        if _misbehave_now(args):
            _sleep_forever()
        return self.total

    def get_state(self) -> int:
        """The total."""
        return self.total

    def load_state(self, state: int) -> None:
        """Takes back a total returned by :meth:`get_state`."""
        self.total = state


if __name__ == "__main__":
    resurgam.serve(Misbehave)
