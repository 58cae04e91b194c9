"""resurgam: the Python SDK of the resurgam actor supervisor.

Two sides, both standard library only:

* **Actor side**: :func:`serve` runs a plain class as an exec actor (``kind =
  "exec"``): each public method takes the call's decoded JSON ``args`` and returns the
  JSON reply; ``get_state``/``load_state`` turn the state into a checkpoint and back.
* **Client side**: :class:`Client` talks to a running supervisor over its control
  socket: ``Client().call("counter", "incr", 5)``, ``status()``, pipelined
  ``call_async``/``call_many``, and ``client.actor("bank").deposit(...)``.

Failures raise subclasses of :class:`Error`, one per error kind of the protocol.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors as _errors
from .actor import serve
from .errors import (
    ActorDead,
    ActorError,
    ActorStopped,
    BadRequest,
    Busy,
    CallFailed,
    Error,
    Timeout,
    Unauthorized,
    UnknownActor,
    UnknownMethod,
    Unreachable,
    error_from,
)

_CLIENT_NAMES = frozenset({"ActorHandle", "ActorMethod", "Client", "new_key", "socket_path"})


def __getattr__(name: str) -> object:
    """Imports the client side on first use: an actor program never pays for it."""
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "serve", *sorted(_CLIENT_NAMES), *_errors.__all__]
