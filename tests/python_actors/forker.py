"""An exec actor that starts processes of its own, for the no-orphans tests (G9).

``spawn`` forks a child that forks a grandchild; both sleep (nearly) forever and
never leave the actor's process group. With ``{"double": true}`` the child exits as
soon as the grandchild exists (a classic double fork): the grandchild is reparented
away from the program but stays in the group. With ``{"setsid": true}`` the child
first leaves the actor's session and process group (``os.setsid``), as a daemon does,
and the grandchild is born in the child's new group; with ``{"setpgid": true}`` it
only leaves the process group (``os.setpgid(0, 0)``), staying in the session. The reply names every pid, so the
test can watch them die with the actor.

``add``/``get`` keep a total, the actor's state (checkpointed by the SDK's default
``__dict__`` state), to show that the actor recovers.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import resurgam

#: How long the spawned processes sleep: longer than any test.
SLEEP_SECONDS = 3600


def _detach_stdio(keep: int) -> None:
    """Points stdin, stdout and stderr at /dev/null and closes every other descriptor
    but ``keep``: the process then holds nothing that ties it to the actor except its
    process group."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)


def _sleep_forever() -> None:
    """Sleeps, then leaves without running any of the parent's cleanup."""
    try:
        time.sleep(SLEEP_SECONDS)
    finally:
        os._exit(0)


def _child(write_fd: int, double: bool, setsid: bool, setpgid: bool) -> None:
    """The child: leaves the session or the group if asked, forks the grandchild,
    reports its pid on ``write_fd``, then sleeps (or, for a double fork, exits at
    once)."""
    try:
        _detach_stdio(write_fd)
        if setsid:
            os.setsid()
        elif setpgid:
            os.setpgid(0, 0)
        grandchild = os.fork()
        if grandchild == 0:
            os.close(write_fd)
            _sleep_forever()
        os.write(write_fd, f"{grandchild}\n".encode())
        os.close(write_fd)
        if double:
            os._exit(0)
        _sleep_forever()
    finally:
        os._exit(0)


def _read_line(fd: int) -> str:
    """Reads up to a newline (or the end) from ``fd``."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


class Forker:
    """The actor: a total, and a method that starts processes."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, args: Optional[int]) -> int:
        """Adds ``args`` (default 1) to the total; returns it."""
        self.total += 1 if args is None else int(args)
        return self.total

    def get(self, args: Any) -> int:
        """The total."""
        return self.total

    def spawn(self, args: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Forks a child that forks a grandchild; returns every pid and the groups."""
        double = bool(args and args.get("double"))
        setsid = bool(args and args.get("setsid"))
        setpgid = bool(args and args.get("setpgid"))
        read_fd, write_fd = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read_fd)
            _child(write_fd, double, setsid, setpgid)
        os.close(write_fd)
        try:
            grandchild = int(_read_line(read_fd))
        finally:
            os.close(read_fd)
        # The grandchild's group is known once the child has reported it (a setsid
        # child leaves before it forks).
        grandchild_pgid = os.getpgid(grandchild)
        if double:
            # Reap the child so the grandchild is truly parentless (reparented).
            os.waitpid(child, 0)
        return {
            "program": os.getpid(),
            "child": child,
            "grandchild": grandchild,
            "double": double,
            "setsid": setsid,
            "setpgid": setpgid,
            "pgid": os.getpgid(0),
            "grandchild_pgid": grandchild_pgid,
        }


if __name__ == "__main__":
    resurgam.serve(Forker)
