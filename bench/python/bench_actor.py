"""The Python exec actor of ``resurgam bench`` W7: a counter and a key-value map in one
class, served with the resurgam Python SDK (``resurgam.serve``).

``resurgam bench`` embeds this file (``include_str!``), writes it into its temporary
directory and configures it as ``kind = "exec"`` with ``command = [<python>, <this
file>]`` and ``PYTHONPATH`` set to the SDK's directory. The methods mirror the Rust
``counter`` and ``kv`` kinds of W1–W3 (``incr``, ``get``, ``put``), so the workloads
send the same calls to both.

For the recovery breakdown the actor reports on stderr, which resurgam logs with the
actor's name, one line per event with wall-clock times (``time.time()``, the clock of
the supervisor's log timestamps):

* ``resurgam-bench start {"main", "imported", "init", "pid"}`` when the instance is
  created: the script's first statement ran, ``import resurgam`` finished, and the
  instance exists (the SDK answers the hello right after, the hello frame is already
  waiting);
* ``resurgam-bench load {"start", "end", "bytes"}`` around ``load_state``, which decodes
  the checkpoint itself (``get_state`` returns pickled bytes), so the decoding is timed.

``python3 bench_actor.py --probe`` prints the first two times as JSON on stdout and
exits without serving: the benchmark's standalone measure of interpreter start and
import.
"""

from __future__ import annotations  # annotations stay text: no typing import at run time

import time

_T_MAIN = time.time()

import json  # noqa: E402 - timed after the first statement on purpose
import os  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402

import resurgam  # noqa: E402

_T_IMPORTED = time.time()

#: Prefix of the stderr lines the benchmark reads from the supervisor's log.
TAG = "resurgam-bench"


def _report(event: str, fields: dict[str, object]) -> None:
    """Writes one ``resurgam-bench EVENT {json}`` line on stderr."""
    sys.stderr.write(f"{TAG} {event} {json.dumps(fields)}\n")
    sys.stderr.flush()


class BenchActor:
    """A counter (``incr``, ``get`` without arguments) and a map of JSON values
    (``put``, ``get`` with ``{"key": ...}``), as the Rust ``counter`` and ``kv``."""

    def __init__(self) -> None:
        self.value = 0
        self.map: dict[str, object] = {}
        _report(
            "start",
            {"main": _T_MAIN, "imported": _T_IMPORTED, "init": time.time(), "pid": os.getpid()},
        )

    def incr(self, by: int | None = None) -> int:
        """Adds ``by`` (default 1) to the counter; returns the new value."""
        self.value += 1 if by is None else int(by)
        return self.value

    def get(self, args: dict[str, str] | None = None) -> object:
        """The counter without arguments; the value under ``args["key"]`` (or ``None``)
        with ``{"key": ...}``."""
        if args is None:
            return self.value
        return self.map.get(args["key"])

    def put(self, args: dict[str, object]) -> object:
        """Sets ``args["key"]`` to ``args["value"]``; returns the previous value or
        ``None``."""
        key = str(args["key"])
        previous = self.map.get(key)
        self.map[key] = args["value"]
        return previous

    def get_state(self) -> bytes:
        """The counter and the map, pickled here (so ``load_state`` times the decoding)."""
        return pickle.dumps((self.value, self.map), protocol=pickle.HIGHEST_PROTOCOL)

    def load_state(self, state: bytes) -> None:
        """Restores a state from :meth:`get_state` and reports how long it took."""
        start = time.time()
        self.value, self.map = pickle.loads(state)
        _report("load", {"start": start, "end": time.time(), "bytes": len(state)})


def main() -> None:
    """Serves :class:`BenchActor`, or with ``--probe`` prints the start-up times."""
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps({"main": _T_MAIN, "imported": _T_IMPORTED}), flush=True)
        return
    resurgam.serve(BenchActor)


if __name__ == "__main__":
    main()
