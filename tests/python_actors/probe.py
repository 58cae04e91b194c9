"""An exec actor that reports what its program was given: environment, descriptors,
working directory, identity, and whether it can read a file.

Used by the isolation tests (environment and descriptors, least privilege G7). Every
method takes one argument (the call's ``args``) and returns plain JSON. ``add``/``get``
keep a total, the actor's state, to show that checkpoints and recovery still work.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import resurgam


def _link(fd: str) -> Optional[str]:
    """What ``/proc/self/fd/<fd>`` points at, or None once that descriptor is closed
    (the one ``os.listdir`` itself used)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class Probe:
    """The actor: a total and a few questions about its own process."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, args: Optional[int]) -> int:
        """Adds ``args`` (default 1) to the total; returns it."""
        self.total += 1 if args is None else int(args)
        return self.total

    def get(self, args: Any) -> int:
        """The total."""
        return self.total

    def env(self, args: Any) -> Dict[str, str]:
        """The whole environment."""
        return dict(os.environ)

    def fds(self, args: Any) -> Dict[str, Any]:
        """The open descriptors as ``/proc/self/fd`` lists them (including the one the
        listing itself opens), and where each points (None: closed since)."""
        listed: List[str] = os.listdir("/proc/self/fd")
        return {"listed": sorted(listed, key=int), "links": {fd: _link(fd) for fd in listed}}

    def cwd(self, args: Any) -> str:
        """The working directory."""
        return os.getcwd()

    def ident(self, args: Any) -> Dict[str, Any]:
        """Who this process is: ids, supplementary groups, process ids."""
        return {
            "uid": os.getuid(),
            "euid": os.geteuid(),
            "gid": os.getgid(),
            "egid": os.getegid(),
            "groups": sorted(os.getgroups()),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
        }

    def read(self, args: str) -> Dict[str, str]:
        """Reads the file ``args``: ``{"text": ...}``, or ``{"error": "<Type>: <text>"}``."""
        try:
            with open(args, encoding="utf-8") as f:
                return {"text": f.read()}
        except OSError as e:
            return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    resurgam.serve(Probe)
