"""Errors of the resurgam SDK: one class per error kind of the control protocol.

Every reply of the supervisor that is an error carries a *kind* and a *message*
(``{"err": {"kind": "UnknownActor", "message": "no actor named \\"x\\""}}``). The client
raises the class of that kind; all of them derive from :class:`Error`, so
``except resurgam.Error`` catches every failure a call can have. A kind this SDK does
not know yet becomes a plain :class:`Error` whose ``kind`` is the kind received.

On the actor side, a method may raise :class:`BadRequest` (the arguments do not fit the
method) or :class:`UnknownMethod`; the client then gets that kind instead of
``ActorError``.

Two classes also derive from a builtin, so code that knows nothing of resurgam still
handles them sensibly: :class:`Unreachable` is a :class:`ConnectionError` and
:class:`Timeout` is a :class:`TimeoutError`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple, Type

__all__ = [
    "Error",
    "BadRequest",
    "Unauthorized",
    "UnknownActor",
    "UnknownMethod",
    "ActorError",
    "ActorDead",
    "ActorStopped",
    "CallFailed",
    "Busy",
    "Timeout",
    "Unreachable",
    "error_from",
]


class Error(Exception):
    """A request failed; ``kind`` names the reason and ``message`` explains it.

    ``str(error)`` is ``"<kind>: <message>"``. Instances pickle with their
    kind and message, so they can cross process boundaries (e.g. in a process pool).
    """

    #: The error kind of the control protocol this class stands for.
    kind: str = "Error"

    def __init__(self, message: str = "", kind: Optional[str] = None) -> None:
        super().__init__(message)
        #: The human-readable explanation sent by the supervisor (or the SDK).
        self.message: str = message
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        if self.kind == type(self).kind:
            return f"{type(self).__name__}({self.message!r})"
        return f"{type(self).__name__}({self.message!r}, kind={self.kind!r})"

    def __reduce__(self) -> Tuple[type, Tuple[str, ...]]:
        if self.kind == type(self).kind:
            return (type(self), (self.message,))
        return (type(self), (self.message, self.kind))


class BadRequest(Error):
    """The request or the call's arguments do not fit (also: a request too long)."""

    kind = "BadRequest"


class Unauthorized(Error):
    """The supervisor refused this connection (its uid may not use the socket)."""

    kind = "Unauthorized"


class UnknownActor(Error):
    """No actor has that name."""

    kind = "UnknownActor"


class UnknownMethod(Error):
    """The actor has no such method; the message lists those it has."""

    kind = "UnknownMethod"


class ActorError(Error):
    """The method refused or raised; the actor's state is unchanged and it lives on.

    For a Python actor the message is ``"<ExceptionType>: <text>"``.
    """

    kind = "ActorError"


class ActorDead(Error):
    """The actor exceeded its restart limit (or cannot load its state) and is DEAD."""

    kind = "ActorDead"


class ActorStopped(Error):
    """The actor is stopped by an operator (a per-actor stop; see the protocol's error kinds).

    Part of the protocol's list of kinds for per-actor ``stop``/``start``; this
    supervisor version does not send it yet.
    """

    kind = "ActorStopped"


class CallFailed(Error):
    """The call crashed the worker on every attempt (a *poison call*) and was dropped."""

    kind = "CallFailed"


class Busy(Error):
    """The supervisor cannot take this now (queue full, too many connections, shutdown)."""

    kind = "Busy"


class Timeout(Error, TimeoutError):
    """No reply within the timeout.

    Raised by the client itself when a per-call timeout expires (a late reply is then
    discarded), or received from the supervisor. Also a builtin :class:`TimeoutError`.
    """

    kind = "Timeout"


class Unreachable(Error, ConnectionError):
    """The supervisor cannot be reached: no socket, refused, or the connection dropped.

    Raised by the client, never sent by the supervisor. Also a builtin
    :class:`ConnectionError`. A call that fails this way may or may not have run.
    """

    kind = "Unreachable"


_BY_KIND: Dict[str, Type[Error]] = {
    cls.kind: cls
    for cls in (
        BadRequest,
        Unauthorized,
        UnknownActor,
        UnknownMethod,
        ActorError,
        ActorDead,
        ActorStopped,
        CallFailed,
        Busy,
        Timeout,
        Unreachable,
    )
}


def error_from(kind: object, message: object) -> Error:
    """Builds the exception for an error *kind* and *message* received on the wire.

    A known kind gives its class; any other kind gives a plain :class:`Error` carrying
    that kind. Non-string values (a malformed reply) are turned into strings.
    """
    kind_text = kind if isinstance(kind, str) else str(kind)
    message_text = message if isinstance(message, str) else str(message)
    cls = _BY_KIND.get(kind_text)
    if cls is None:
        return Error(message_text, kind=kind_text)
    return cls(message_text)
