"""The actor side: :func:`serve` runs a plain Python class as a resurgam exec actor.

A program started by resurgam (``kind = "exec"``) finds its protocol channel, a
connected Unix stream socket, on the file descriptor named by ``$RESURGAM_FD``.
:func:`serve` speaks the worker protocol of ``docs/exec-protocol.md`` on it:

* ``C`` (call) runs the instance's public method named by the call with one argument,
  the call's decoded JSON ``args`` (``None`` when absent), and answers its return value
  as JSON. A method that takes no parameter besides ``self`` may also be called, with
  no ``args``.
* ``S`` (save) answers ``get_state()``; ``L`` (load) passes a saved state to
  ``load_state(state)``.

Errors, as the client sees them:

* a method raising :class:`resurgam.BadRequest`, :class:`resurgam.UnknownMethod` or
  :class:`resurgam.ActorError` gives that kind with the exception's message;
* any other exception gives ``ActorError`` with the message
  ``"<ExceptionType>: <text>"``; the actor lives on (keep the state unchanged when you
  raise: after a crash the call is replayed and must raise again);
* a return value that is not JSON (``NaN``, a ``set``, an object) gives ``ActorError``
  ``"reply is not JSON: ..."``;
* a method name that starts with ``_``, ``get_state``, ``load_state``, or a name that
  is not a callable attribute gives ``UnknownMethod``, listing the public methods.

State encoding (internal to this SDK; resurgam stores the bytes as they are): one tag
byte, then the payload.

* ``b"B"`` + the bytes themselves, when ``get_state()`` returns ``bytes``,
  ``bytearray`` or ``memoryview``; ``load_state`` then receives ``bytes``.
* ``b"P"`` + ``pickle.dumps(state, pickle.HIGHEST_PROTOCOL)`` for anything else;
  ``load_state`` receives the unpickled object. Checkpoints are unpickled, so the
  state directory must be as trusted as the program itself.

A class that defines neither ``get_state`` nor ``load_state`` gets defaults: the state
is the instance's ``__dict__`` (pickled) and loading updates ``__dict__`` with it.
Defining only one of the two is refused (the pair must agree on the format).

Throughput: requests are read a megabyte at a time and applied one after another. The
answer to each request is sent before the next request is applied, as the protocol
requires (the answers resurgam has received tell it which call was running if the
program dies, so that call alone is blamed), and before blocking for more input.

Nothing is ever written to stdout by this module: stdout and stderr belong to the
program (resurgam logs them). Protocol violations by the supervisor (an unknown frame
type, a call that is not JSON) are reported on stderr and end the program with
status 2; the end of the channel ends :func:`serve` normally.
"""

from __future__ import annotations

import json
import json.scanner
import os
import pickle
import socket
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

from ._frames import (
    MAX_JSON_BODY,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    ProtocolError,
)
from .errors import ActorError, BadRequest, Error, UnknownMethod

if TYPE_CHECKING:
    from ._frames import Body

__all__ = ["serve", "PROTOCOL", "ENV_FD"]

#: The worker protocol version this SDK speaks.
PROTOCOL = 1
#: The environment variable that names the protocol channel's file descriptor.
ENV_FD = "RESURGAM_FD"

#: Methods that are never callable by a client.
_RESERVED = frozenset({"get_state", "load_state"})
#: Error kinds a method may choose by raising the matching class; anything else is an
#: ``ActorError``.
_CHOSEN_KINDS = {cls.kind for cls in (BadRequest, UnknownMethod, ActorError)}
#: Answers are sent early once this much output is waiting (bounds memory).
_FLUSH_AT = 1 << 20
#: Longest error message sent (longer ones are cut): the worker keeps no more (4 KiB).
_MAX_MESSAGE = 4096
_MISSING = object()


def serve(cls: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Runs ``cls(*args, **kwargs)`` as a resurgam exec actor until resurgam stops it.

    Returns normally when the supervisor closes the channel (the program should then
    exit with status 0, which it does when ``serve`` is its last statement). Exits with
    status 2 (``SystemExit``) after a message on stderr when the program was not started
    by resurgam (no ``$RESURGAM_FD``) or the supervisor breaks the protocol.

    The instance is created once, before the hello; its state then comes from an ``L``
    (a checkpoint) if resurgam has one. See the module docstring for how calls, errors
    and state are mapped.
    """
    sock = _channel()
    try:
        instance = cls(*args, **kwargs)
        _Actor(instance, sock).run()
    finally:
        sock.close()


def _fatal(message: str) -> NoReturn:
    """Reports a fatal problem on stderr and exits with status 2."""
    try:
        sys.stderr.write(f"resurgam: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    raise SystemExit(2)


def _channel() -> socket.socket:
    """The protocol channel named by ``$RESURGAM_FD``, as a blocking socket."""
    value = os.environ.get(ENV_FD)
    if not value:
        _fatal(
            f"${ENV_FD} is not set: this program is a resurgam exec actor and must be "
            'started by resurgam (an [[actor]] with kind = "exec"; see '
            "docs/exec-protocol.md)"
        )
    try:
        fd = int(value)
        if fd < 0:
            raise ValueError(value)
    except ValueError:
        _fatal(f"${ENV_FD}={value!r} is not a file descriptor number")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        _fatal(f"${ENV_FD}={fd} is not an open socket ({e}); start this program with resurgam")
    sock.setblocking(True)
    # Processes the actor starts must not hold the channel open.
    sock.set_inheritable(False)
    return sock


def _describe(exc: BaseException) -> str:
    """``"<ExceptionType>: <text>"`` (just the type when the text is empty)."""
    text = exc.message if isinstance(exc, Error) else str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _callable_static(attr: object) -> bool:
    """Whether a class or instance attribute, found without running descriptors, is a
    method or other callable (a ``property`` is not)."""
    return isinstance(attr, (staticmethod, classmethod)) or callable(attr)


_CO_VARARGS = 0x04


def _getattr_static(obj: Any, name: str, default: Any) -> Any:
    """``inspect.getattr_static`` for plain instances, without importing inspect: a data
    descriptor of the class, else the instance's own attribute, else the class's."""
    found = default
    for klass in type(obj).__mro__:
        if name in klass.__dict__:
            found = klass.__dict__[name]
            break
    if found is not default and (hasattr(type(found), "__set__") or hasattr(type(found), "__delete__")):
        return found
    try:
        own = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        own = {}
    if name in own:
        return own[name]
    return found


def _takes_argument(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts one positional argument (unknown signatures: assume so)."""
    # A method or function of Python code: its code object says, without inspect.
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    if code is not None and type(func).__name__ == "function" and not hasattr(func, "__wrapped__"):
        bound = 1 if getattr(fn, "__self__", None) is not None and func is not fn else 0
        return code.co_argcount - bound >= 1 or bool(code.co_flags & _CO_VARARGS)
    try:
        import inspect

        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in signature.parameters.values())


class _Actor:
    """One instance served on one channel."""

    def __init__(self, instance: Any, sock: socket.socket) -> None:
        self._obj = instance
        self._reader = FrameReader(sock)
        self._writer = FrameWriter(sock)
        self._methods: Dict[str, Callable[[Any], Any]] = {}
        self._encode = _json_encoder()
        # Frame type -> handler; only the hello is expected until it has come.
        self._handlers: Dict[bytes, Callable[[Body], None]] = {b"H": self._hello}
        get_state = getattr(instance, "get_state", None)
        load_state = getattr(instance, "load_state", None)
        if callable(get_state) != callable(load_state):
            missing = "load_state" if callable(get_state) else "get_state"
            raise TypeError(
                f"{type(instance).__name__} defines only one of get_state/load_state; "
                f"define {missing} too (or neither, to save the instance's __dict__)"
            )
        self._get_state: Callable[[], Any] = (
            get_state if callable(get_state) else self._default_get_state
        )
        self._load_state: Callable[[Any], Any] = (
            load_state if callable(load_state) else self._default_load_state
        )

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serves until the end of the channel."""
        reader, writer = self._reader, self._writer
        try:
            while True:
                try:
                    frame = reader.pop()
                    while frame is not None:
                        ftype, body = frame
                        handler = self._handlers.get(ftype)
                        if handler is None:
                            self._unexpected(ftype)
                        # Answers go out before the next request runs: if it kills
                        # the program, the calls before it must not be blamed.
                        if writer.pending:
                            writer.flush()
                        handler(body)
                        if writer.pending >= _FLUSH_AT:
                            writer.flush()
                        frame = reader.pop()
                except ProtocolError as e:
                    _fatal(f"protocol error from the supervisor: {e}")
                writer.flush()
                if not reader.fill():
                    if reader.buffered:
                        sys.stderr.write(
                            f"resurgam: the channel closed inside a frame "
                            f"({reader.buffered} bytes unread)\n"
                        )
                    return
        except (BrokenPipeError, ConnectionResetError):
            # The supervisor is gone; it restarts us if it still wants us.
            return

    def _unexpected(self, ftype: bytes) -> NoReturn:
        if ftype == b"H":
            _fatal("protocol error from the supervisor: a second hello")
        _fatal(f"protocol error from the supervisor: {ftype!r} before the hello")

    def _hello(self, body: Body) -> None:
        try:
            hello = json.loads(body)
        except ValueError as e:
            _fatal(f"protocol error from the supervisor: the hello is not JSON ({e})")
        if not isinstance(hello, dict):
            _fatal("protocol error from the supervisor: the hello is not a JSON object")
        if hello.get("protocol") != PROTOCOL:
            # The supervisor decides; it names both versions in its log.
            sys.stderr.write(
                f"resurgam: the supervisor speaks protocol {hello.get('protocol')!r}, "
                f"this SDK speaks {PROTOCOL}\n"
            )
        from . import __version__

        answer = {"protocol": PROTOCOL, "program": f"resurgam-python/{__version__}"}
        self._writer.add(b"H", json.dumps(answer).encode("utf-8"))
        self._handlers = {b"C": self._call, b"S": self._save, b"L": self._load}

    def _error(self, kind: str, message: str) -> None:
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "…"
        # Lone surrogates (possible in exception texts) are not UTF-8: replace them.
        message = message.encode("utf-8", "replace").decode("utf-8")
        body = json.dumps({"kind": kind, "message": message}, ensure_ascii=False)
        self._writer.add(b"E", body.encode("utf-8"))

    # -- calls ------------------------------------------------------------------------

    def _call(self, body: Body) -> None:
        try:
            request = _decode_json(body)
        except ValueError as e:
            _fatal(f"protocol error from the supervisor: a call that is not JSON ({e})")
        try:
            method = self._methods[request["method"]]
        except (KeyError, TypeError, IndexError):
            found = self._lookup(request)
            if found is None:
                return
            method = found
        try:
            result = method(request.get("args"))
        except Error as e:
            if e.kind in _CHOSEN_KINDS:
                self._error(e.kind, e.message)
            else:
                self._error("ActorError", _describe(e))
            return
        except Exception as e:
            self._error("ActorError", _describe(e))
            return
        try:
            if type(result) is int:
                text = str(result).encode("ascii")
            elif result is None:
                text = b"null"
            else:
                text = self._encode(result).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            self._error("ActorError", f"reply is not JSON: {_describe(e)}")
            return
        if len(text) > MAX_JSON_BODY:
            self._error(
                "ActorError",
                f"reply is {len(text)} bytes of JSON, over the limit of {MAX_JSON_BODY}",
            )
            return
        self._writer.add_checked(b"R", text)

    def _lookup(self, request: Any) -> Optional[Callable[[Any], Any]]:
        """Finds (and caches) the method a call names; answers ``E`` and returns
        ``None`` when there is none."""
        if not isinstance(request, dict):
            _fatal("protocol error from the supervisor: a call that is not a JSON object")
        name = request.get("method")
        if not isinstance(name, str):
            self._error("BadRequest", 'a call needs a "method" string')
            return None
        fn = self._resolve(name)
        if fn is None:
            methods = ", ".join(self._method_names()) or "(none)"
            self._error("UnknownMethod", f"unknown method {json.dumps(name)}; methods: {methods}")
            return None
        if not _takes_argument(fn):
            fn = _without_argument(name, fn)
        self._methods[name] = fn
        return fn

    def _resolve(self, name: str) -> Optional[Callable[..., Any]]:
        """The public callable attribute ``name`` of the instance, else ``None``."""
        if not name or name.startswith("_") or name in _RESERVED:
            return None
        static = _getattr_static(self._obj, name, _MISSING)
        if static is not _MISSING and not _callable_static(static):
            return None  # data, or a property: never run it to find out
        try:
            attr = getattr(self._obj, name)
        except Exception:
            return None
        return attr if callable(attr) else None

    def _method_names(self) -> List[str]:
        """The sorted names a client may call."""
        names = []
        for name in dir(self._obj):
            if name.startswith("_") or name in _RESERVED:
                continue
            static = _getattr_static(self._obj, name, _MISSING)
            if static is not _MISSING and _callable_static(static):
                names.append(name)
        return sorted(names)

    # -- state ------------------------------------------------------------------------

    def _save(self, body: Body) -> None:
        try:
            state = self._get_state()
        except Exception as e:
            self._error("ActorError", _describe(e))
            return
        if isinstance(state, bytes):
            tag, payload = b"B", state
        elif isinstance(state, (bytearray, memoryview)):
            # Copied: a later call in this batch may change it before it is sent.
            tag, payload = b"B", bytes(state)
        else:
            try:
                payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                self._error("ActorError", f"state cannot be pickled: {_describe(e)}")
                return
            tag = b"P"
        try:
            self._writer.add(b"T", tag, payload)
        except FrameTooLarge as e:
            self._error("ActorError", f"state too large: {e}")

    def _load(self, body: Body) -> None:
        with memoryview(body) as view:
            tag = bytes(view[:1])
            try:
                if not tag:
                    self._error("ActorError", "the state to load is empty")
                    return
                if tag == b"B":
                    state: Any = bytes(view[1:])
                elif tag == b"P":
                    state = pickle.loads(view[1:])
                else:
                    self._error(
                        "ActorError",
                        f"unknown state encoding {tag!r}: this state was not saved by "
                        "resurgam-python",
                    )
                    return
                self._load_state(state)
            except Exception as e:
                self._error("ActorError", _describe(e))
                return
        # Loading may replace attributes: look methods up afresh.
        self._methods.clear()
        self._writer.add(b"K")

    def _default_get_state(self) -> Any:
        """The instance's ``__dict__`` (pickled by the caller)."""
        return vars(self._obj)

    def _default_load_state(self, state: Any) -> None:
        """Updates the instance's ``__dict__`` with a state from the default save."""
        if not isinstance(state, dict):
            raise TypeError(f"the default load_state needs a dict, got {type(state).__name__}")
        vars(self._obj).update(state)


def _not_json(value: Any) -> NoReturn:
    """The encoder's ``default``: nothing beyond plain JSON values is encoded."""
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_encoder() -> Callable[[Any], str]:
    """A compact, strict (no NaN), non-ASCII-escaping JSON encoder.

    ``json.JSONEncoder.encode`` builds a new C encoder for every value; for replies,
    which are many and small, one C encoder built once is about twice as fast. It is
    checked against the public encoder and not used when it differs (or is missing).
    """
    public = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    quote = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or quote is None:
        return public
    try:
        # markers=None: no cycle check (a cycle ends in RecursionError, then "not JSON").
        c_encode = make(None, _not_json, quote, None, ":", ",", False, False, False)
        sample = {"a": [1, '\u00e9"', None, 1.5, True, {"b": []}]}
        if "".join(c_encode(sample, 0)) != public(sample):
            return public
    except Exception:
        return public
    join = "".join

    def encode(value: Any) -> str:
        return join(c_encode(value, 0))

    return encode


#: ``scan_once(text, index) -> (value, end)`` of the C scanner (typeshed's stub types
#: ``make_scanner`` oddly, hence the casts).
_scan_json = (
    json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[no-untyped-call]
)


def _decode_json(body: Body) -> Any:
    """Decodes a UTF-8 JSON body (``ValueError`` when it is not JSON).

    The scanner alone is much faster than ``json.loads`` for small bodies; anything it
    does not take whole (whitespace around the value, errors) goes the normal way.
    """
    text = body.decode("utf-8")
    try:
        value, end = _scan_json(text, 0)
        if end == len(text):
            return value
    except StopIteration:
        pass
    return json.loads(text)


def _without_argument(name: str, fn: Callable[[], Any]) -> Callable[[Any], Any]:
    """Adapts a method that takes no argument: called with ``None``, else BadRequest."""

    def call(args: Any) -> Any:
        if args is not None:
            raise BadRequest(f"{name} takes no arguments")
        return fn()

    return call
