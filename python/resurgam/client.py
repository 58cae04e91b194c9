"""The client side: :class:`Client` talks to a running supervisor over its control socket.

The control protocol is newline-delimited JSON over a Unix stream socket. Each request
carries an ``id``; each reply echoes it with either ``"ok"`` (the result) or ``"err"``
(``{"kind", "message"}``). Replies to pipelined requests may come in any order, so the
client matches them by id: one connection carries any number of requests in flight, from
any number of threads.

Socket discovery, as the ``resurgam`` CLI does it: the ``socket`` argument, else
``$RESURGAM_SOCKET``, else ``<runtime_dir>/control.sock`` where ``runtime_dir`` is the
first entry of ``$RUNTIME_DIRECTORY`` (a ``:``-separated list), else ``<state_dir>/run``
with ``state_dir`` the first entry of ``$STATE_DIRECTORY``, else ``resurgam-state``
(relative to the working directory), and when that last one is no socket but the
packaged service's ``/run/resurgam/control.sock`` is, that one. See :func:`socket_path`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import socket as _socket
import stat
import struct
import threading
import time
import uuid
from concurrent.futures import Future
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .errors import Busy, Error, Timeout, Unreachable, error_from

__all__ = ["Client", "ActorHandle", "ActorMethod", "socket_path", "new_key", "ENV_SOCKET"]

#: The environment variable that names the control socket.
ENV_SOCKET = "RESURGAM_SOCKET"
#: State directory used when neither ``$STATE_DIRECTORY`` nor anything else names one.
DEFAULT_STATE_DIR = "resurgam-state"
#: The packaged service's socket (``systemd/resurgam.service``: ``RuntimeDirectory=resurgam``).
SERVICE_SOCKET = "/run/resurgam/control.sock"

#: How long connecting or one write may block, in seconds, when the client has no
#: ``timeout`` (with one, that is the bound).
IO_TIMEOUT = 30.0

#: How long a keyed call is retried by default, in seconds (``Client(retry_for=...)``).
DEFAULT_RETRY_FOR = 30.0
#: The first pause between two attempts of a keyed call, and the longest, in seconds.
_BACKOFF_INITIAL = 0.01
_BACKOFF_MAX = 1.0

#: A path to the control socket.
PathArg = Union[str, "os.PathLike[str]"]
#: One call of :meth:`Client.call_many`: ``(method, args)``, or a method name alone.
CallSpec = Union[str, Tuple[str, Any], Sequence[Any]]

_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
# The supervisor answers an over-long request line with a null id and this message.
_TOO_LONG = re.compile(r"max_request_bytes \((\d+) bytes\)")


def _first_entry(value: Optional[str]) -> Optional[str]:
    """The first entry of a ``:``-separated list; ``None`` when it is empty or unset."""
    if not value:
        return None
    first = value.split(":", 1)[0]
    return first or None


def socket_path(
    socket: Optional[PathArg] = None, environ: Optional[Mapping[str, str]] = None
) -> str:
    """Finds the control socket the way the CLI does.

    ``socket`` if given, else ``$RESURGAM_SOCKET`` (when not empty), else
    ``$RUNTIME_DIRECTORY``'s first entry + ``/control.sock``, else
    ``$STATE_DIRECTORY``'s first entry (or ``resurgam-state``) + ``/run/control.sock``;
    when that is the relative default and no socket, but the packaged service's
    :data:`SERVICE_SOCKET` is one, the latter. ``environ`` defaults to ``os.environ``.
    """
    if socket is not None:
        return os.fspath(socket)
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_SOCKET)
    if explicit:
        return explicit
    runtime_dir = _first_entry(env.get("RUNTIME_DIRECTORY"))
    if runtime_dir is None:
        state_dir = _first_entry(env.get("STATE_DIRECTORY")) or DEFAULT_STATE_DIR
        runtime_dir = os.path.join(state_dir, "run")
    default = os.path.join(runtime_dir, "control.sock")
    if not os.path.isabs(default) and not _is_socket(default) and _is_socket(SERVICE_SOCKET):
        return SERVICE_SOCKET
    return default


def _is_socket(path: str) -> bool:
    """Whether ``path`` is a Unix socket (symbolic links are not followed)."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _new_future() -> "Future[Any]":
    """A future already marked running: a sent request cannot be cancelled."""
    future: "Future[Any]" = Future()
    future.set_running_or_notify_cancel()
    return future


class _Pending:
    """A request waiting for its reply."""

    __slots__ = ("future", "size")

    def __init__(self, future: "Future[Any]", size: int) -> None:
        self.future = future
        self.size = size  # length of the request line, without its newline


class _Closed(Exception):
    """The connection failed before a request could be registered on it."""


class _BadReply(Exception):
    """A reply line that is not a JSON object."""


class _Connection:
    """One connected control socket, with its reader thread and its pending requests.

    Connecting, and each write, give up after ``io_timeout`` seconds (a supervisor
    whose connection queue is full, or that reads nothing, is unreachable then); reads
    are bounded per request instead (see :meth:`Client.call`).
    """

    def __init__(self, path: str, io_timeout: float) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(io_timeout)
            sock.connect(path)
            # Blocking again for the reader thread; writes keep a bound of their own.
            sock.settimeout(None)
            seconds = int(io_timeout)
            micros = int((io_timeout - seconds) * 1e6)
            sock.setsockopt(
                _socket.SOL_SOCKET, _socket.SO_SNDTIMEO, struct.pack("@ll", seconds, micros)
            )
        except OSError as e:
            sock.close()
            reason = e.strerror or str(e)
            raise Unreachable(
                f"cannot connect to the resurgam control socket {path}: {reason}"
            ) from None
        self.path = path
        self.sock = sock
        self.lock = threading.Lock()  # pending, failure, next_id, refusal
        self.write_lock = threading.Lock()
        self.pending: Dict[int, _Pending] = {}
        self.failure: Optional[Error] = None
        self._refusal: Optional[Error] = None
        self._next_id = 1
        # The Client is gone: end the connection once nothing is pending.
        self._orphaned = False
        self.reader = threading.Thread(
            target=self._read_loop, name=f"resurgam-client-reader {path}", daemon=True
        )
        self.reader.start()

    # -- requests ---------------------------------------------------------------------

    def register(self, payloads: Sequence[bytes]) -> Tuple[List[int], List["Future[Any]"], bytes]:
        """Gives each payload (a JSON object without ``id``) an id and a future.

        Returns the ids, the futures and the request lines to send. Raises
        :class:`_Closed` if the connection has already failed.
        """
        ids: List[int] = []
        futures: List["Future[Any]"] = []
        lines: List[bytes] = []
        with self.lock:
            if self.failure is not None:
                raise _Closed()
            for payload in payloads:
                rid = self._next_id
                self._next_id += 1
                line = b'{"id":%d,%s' % (rid, payload[1:])
                future = _new_future()
                self.pending[rid] = _Pending(future, len(line))
                ids.append(rid)
                futures.append(future)
                lines.append(line)
        lines.append(b"")
        return ids, futures, b"\n".join(lines)

    def send(self, data: bytes) -> None:
        """Writes request lines; a failure fails every pending request."""
        with self.write_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                self.fail(Unreachable(f"connection to {self.path} lost: {e}"))

    def forget(self, rid: int) -> bool:
        """Stops waiting for ``rid``'s reply. False if the reply is being delivered."""
        with self.lock:
            return self.pending.pop(rid, None) is not None

    def fail(self, error: Error) -> None:
        """Ends the connection: every pending request fails with ``error`` (or with the
        first failure, if there was one already)."""
        with self.lock:
            if self.failure is None:
                self.failure = error
            failure = self.failure
            pending, self.pending = self.pending, {}
        for entry in pending.values():
            entry.future.set_exception(error_from(failure.kind, failure.message))
        try:
            self.sock.shutdown(_socket.SHUT_RDWR)  # wakes the reader and any writer
        except OSError:
            pass

    def release(self) -> None:
        """The client was garbage-collected: close now if idle, else after the last
        pending reply (futures from ``call_async`` may outlive their client)."""
        with self.lock:
            self._orphaned = True
            idle = not self.pending
        if idle:
            self.fail(Unreachable("the client was garbage-collected"))

    def close(self, error: Error, wait: bool = True) -> None:
        """Fails what is pending with ``error`` and ends the reader thread."""
        self.fail(error)
        if wait and threading.current_thread() is not self.reader:
            self.reader.join(5.0)

    # -- replies ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        reason: Error
        try:
            with self.sock.makefile("rb", buffering=1 << 16) as replies:
                while True:
                    line = replies.readline()
                    if not line:
                        break
                    if line.strip():
                        self._dispatch(line)
            with self.lock:
                refusal = self._refusal
            reason = refusal or Unreachable("the supervisor closed the connection")
        except _BadReply as e:
            reason = Unreachable(f"not a resurgam control socket ({self.path}): {e}")
        except (OSError, ValueError) as e:
            reason = Unreachable(f"connection to {self.path} lost: {e}")
        except BaseException as e:  # never leave futures hanging
            reason = Unreachable(f"reader thread failed: {type(e).__name__}: {e}")
        self.fail(reason)
        with self.write_lock:
            self.sock.close()

    def _dispatch(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            raise _BadReply(f"a reply that is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise _BadReply(f"a reply that is not a JSON object: {line[:200]!r}")
        rid = reply.get("id")
        if rid is None:
            self._unattributed(reply)
            return
        if type(rid) is not int:
            return  # not one of ours
        with self.lock:
            entry = self.pending.pop(rid, None)
            last = self._orphaned and not self.pending
        if entry is not None:
            err = reply.get("err")
            if err is not None:
                entry.future.set_exception(_error_of(err))
            elif "ok" in reply:
                entry.future.set_result(reply["ok"])
            else:
                entry.future.set_exception(Error(f"reply has neither ok nor err: {line[:200]!r}"))
        # (no entry: a late reply to a request that timed out)
        if last:
            self.fail(Unreachable("the client was garbage-collected"))

    def _unattributed(self, reply: Dict[str, Any]) -> None:
        """A reply with a null id: the supervisor could not tie it to a request.

        Either the connection is refused (``Unauthorized``, ``Busy``: it closes next) or
        a request line was over ``max_request_bytes`` (then the message says the limit,
        and the oldest pending request longer than that gets the error).
        """
        err = reply.get("err")
        if err is None:
            return
        error = _error_of(err)
        target: Optional[_Pending] = None
        with self.lock:
            too_long = _TOO_LONG.search(error.message)
            if too_long is not None:
                limit = int(too_long.group(1))
                candidates = [rid for rid, p in self.pending.items() if p.size > limit]
                if candidates:
                    target = self.pending.pop(min(candidates))
            else:
                self._refusal = error
                if len(self.pending) == 1:
                    target = self.pending.pop(next(iter(self.pending)))
        if target is not None:
            target.future.set_exception(error)


def _not_on_reader(conn: _Connection) -> None:
    """Refuses to wait on the thread that delivers the replies (it would wait forever)."""
    if threading.current_thread() is conn.reader:
        raise RuntimeError(
            "cannot wait for a reply on the client's reader thread (in a future's "
            "callback): use call_async there"
        )


def _error_of(err: Any) -> Error:
    """The exception for a reply's ``err`` member."""
    if isinstance(err, dict):
        return error_from(err.get("kind", "Error"), err.get("message", ""))
    return Error(f"malformed error reply: {err!r}")


def _payload(request: Mapping[str, Any]) -> bytes:
    """Encodes a request object (without ``id``) as compact UTF-8 JSON.

    Raises ``TypeError``/``ValueError`` for values that are not JSON (``NaN`` included).
    """
    if not request:
        raise ValueError("empty request")
    try:
        return _ENCODE(request).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"request is not valid UTF-8 text: {e}") from None


def new_key() -> str:
    """A fresh idempotency key (32 hex digits, random): one per logical call, and the
    same key for every retry of that call."""
    return uuid.uuid4().hex


def _call_request(actor: str, method: str, args: Any, key: Optional[str]) -> Dict[str, Any]:
    request: Dict[str, Any] = {"op": "call", "actor": actor, "method": method}
    if args is not None:
        request["args"] = args
    if key is not None:
        request["key"] = key
    return request


class Client:
    """A connection to a resurgam supervisor's control socket.

    ``socket`` is the socket's path (default: discovered like the CLI, see
    :func:`socket_path`); ``timeout`` is the default per-request timeout in seconds
    (``None``: wait forever). The connection is opened on first use (or by
    :meth:`connect`); if it drops, requests in flight fail with
    :class:`~resurgam.Unreachable` and the next request connects again. A request is
    never sent twice by the client, except a :meth:`call` with an idempotency ``key``:
    that one is sent again with the same key (the supervisor runs it once and answers
    every attempt with the first reply) while the supervisor is unreachable, the
    connection is lost before the reply, or the answer is ``Busy``, for up to
    ``retry_for`` seconds (default :data:`DEFAULT_RETRY_FOR`; ``0``: never).

    Thread safety: one ``Client`` may be used from any number of threads at once.
    Requests share one connection and are pipelined; writes are serialised by a lock
    and one background daemon thread (started with the connection) reads the replies
    and hands each to its request by id. Callbacks added to futures from
    :meth:`call_async` run on that thread and must not block.

    Errors: every failure raises a subclass of :class:`~resurgam.Error` named after the
    reply's error kind (``UnknownActor``, ``ActorError``, ...); ``Timeout`` when a
    timeout expires (the late reply is discarded); ``Unreachable`` when the socket
    cannot be reached or the connection is lost, also when connecting or writing a
    request blocks longer than ``timeout`` (without one, :data:`IO_TIMEOUT`).

    Usable as a context manager; :meth:`close` ends the connection.
    """

    def __init__(
        self,
        socket: Optional[PathArg] = None,
        timeout: Optional[float] = None,
        retry_for: float = DEFAULT_RETRY_FOR,
    ) -> None:
        #: The control socket's path.
        self.path: str = socket_path(socket)
        #: Default timeout in seconds for requests that do not give one.
        self.timeout: Optional[float] = timeout
        #: How long, in seconds, a keyed call is sent again after a lost connection.
        self.retry_for: float = retry_for
        self._lock = threading.Lock()
        self._conn: Optional[_Connection] = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Client({self.path!r}, timeout={self.timeout!r})"

    # -- connection -------------------------------------------------------------------

    def connect(self) -> None:
        """Connects now (otherwise the first request does). Raises ``Unreachable``."""
        self._connection()

    def _connection(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise Unreachable("this client is closed")
            conn = self._conn
            if conn is None or conn.failure is not None:
                io_timeout = IO_TIMEOUT if self.timeout is None else max(self.timeout, 0.001)
                conn = self._conn = _Connection(self.path, io_timeout)
            return conn

    def close(self) -> None:
        """Closes the connection; requests still in flight fail with ``Unreachable``.

        The client cannot be used afterwards. Closing twice is harmless.
        """
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(Unreachable("the client was closed"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            conn = self._conn
            if conn is not None:
                conn.release()
        except Exception:
            pass

    # -- sending ----------------------------------------------------------------------

    def _submit(
        self, requests: Sequence[Mapping[str, Any]]
    ) -> Tuple[_Connection, List[int], List["Future[Any]"]]:
        """Sends requests (pipelined, one write); returns their ids and futures."""
        payloads = [_payload(r) for r in requests]
        for _attempt in range(3):
            conn = self._connection()
            try:
                ids, futures, data = conn.register(payloads)
            except _Closed:
                continue  # it failed just now; nothing was sent: use a new one
            conn.send(data)
            return conn, ids, futures
        raise Unreachable(f"the connection to {self.path} keeps failing")

    def _wait(
        self, conn: _Connection, rid: int, future: "Future[Any]", timeout: Optional[float]
    ) -> Any:
        """The result of one request, or its error; ``Timeout`` when ``timeout`` (else
        the client's default) expires first."""
        _not_on_reader(conn)
        limit = self.timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            if future.done():
                # Either the reply came just now, or it is itself a Timeout error.
                return future.result()
            if conn.forget(rid):
                raise Timeout(f"no reply within {limit} s") from None
            return future.result()  # the reader is delivering it right now

    def request(self, op: str, timeout: Optional[float] = None, **fields: Any) -> Any:
        """Sends any request ``{"op": op, **fields}`` (fields that are ``None`` are left
        out) and returns its ``ok`` value. For ops this class has no method for."""
        request: Dict[str, Any] = {"op": op}
        request.update((k, v) for k, v in fields.items() if v is not None)
        conn, ids, futures = self._submit([request])
        return self._wait(conn, ids[0], futures[0], timeout)

    # -- calls ------------------------------------------------------------------------

    def call(
        self,
        actor: str,
        method: str,
        args: Any = None,
        timeout: Optional[float] = None,
        key: Optional[str] = None,
    ) -> Any:
        """Calls ``method`` of ``actor`` with ``args`` (any JSON value; ``None``: none)
        and returns the reply's ``ok`` value, or raises the error kind's class.

        ``timeout`` in seconds overrides the client's default. ``key`` is an
        idempotency key (1 to 128 printable ASCII characters; :func:`new_key` makes
        one): the same key again, on any connection, gets the first call's reply
        without running it twice. A keyed call is retried with its key: when the
        supervisor cannot be reached, the connection is lost before the reply, or the
        answer is ``Busy`` (or the supervisor's ``Timeout``: it could not tell whether
        the call ran), the client reconnects and sends it again, pausing 10 ms at first
        and up to 1 s, until it gets an answer or ``retry_for`` seconds have passed
        (then the last error is raised). ``timeout`` bounds each attempt's wait for
        its reply; when it expires, ``Timeout`` is raised without a retry.
        """
        request = _call_request(actor, method, args, key)
        if key is None or self.retry_for <= 0:
            conn, ids, futures = self._submit([request])
            return self._wait(conn, ids[0], futures[0], timeout)
        return self._call_retrying(request, timeout)

    def _call_retrying(self, request: Mapping[str, Any], timeout: Optional[float]) -> Any:
        """Sends a keyed call until it is answered with something other than a
        "not run, or not known" error, or :attr:`retry_for` seconds have passed."""
        deadline = time.monotonic() + self.retry_for
        pause = _BACKOFF_INITIAL
        while True:
            try:
                conn, ids, futures = self._submit([request])
            except Unreachable as e:
                if self._closed:
                    raise
                error: Error = e
            else:
                try:
                    return self._wait(conn, ids[0], futures[0], timeout)
                except (Unreachable, Busy) as e:
                    error = e
                except Timeout as e:
                    # The supervisor's answer Timeout (its future holds it) may be retried;
                    # this call's own timeout expiring may not.
                    if not futures[0].done() or futures[0].exception() is not e:
                        raise
                    error = e
            left = deadline - time.monotonic()
            if left <= 0:
                raise error
            time.sleep(min(pause, left))
            pause = min(pause * 2, _BACKOFF_MAX)

    def call_async(
        self, actor: str, method: str, args: Any = None, key: Optional[str] = None
    ) -> "Future[Any]":
        """Sends a call without waiting and returns a ``concurrent.futures.Future``.

        Any number of calls may be in flight on the connection; calls from one thread
        reach the actor in the order they were made. The future's result is the ``ok``
        value; its exception an :class:`~resurgam.Error`. No timeout applies: use
        ``future.result(timeout)`` (which raises ``concurrent.futures.TimeoutError``
        and keeps the call pending). A keyed call is sent once here: to retry it, call
        again with the same key (or use :meth:`call`, which does).
        """
        _conn, _ids, futures = self._submit([_call_request(actor, method, args, key)])
        return futures[0]

    def call_many(
        self,
        actor: str,
        calls: Iterable[CallSpec],
        timeout: Optional[float] = None,
        return_exceptions: bool = False,
    ) -> List[Any]:
        """Sends many calls to ``actor`` at once (one write, pipelined) and returns
        their results in the order of ``calls``.

        Each call is ``(method, args)`` or just ``"method"``. The actor runs them in
        that order. When some fail, the first failure (in the order of ``calls``) is
        raised once every call has been answered, unless ``return_exceptions`` is
        true: then the errors take their calls' places in the list. ``timeout`` (else
        the client's default) bounds the whole batch: on expiry ``Timeout`` is raised
        and the calls still unanswered are discarded (they may still run).
        """
        requests = []
        for spec in calls:
            if isinstance(spec, str):
                method, args = spec, None
            else:
                method, args = spec[0], (spec[1] if len(spec) > 1 else None)
            requests.append(_call_request(actor, method, args, None))
        if not requests:
            return []
        conn, ids, futures = self._submit(requests)
        _not_on_reader(conn)
        limit = self.timeout if timeout is None else timeout
        _done, not_done = concurrent.futures.wait(futures, timeout=limit)
        if not_done:
            late = sum(1 for rid in ids if conn.forget(rid))
            if late:
                raise Timeout(f"{late} of {len(ids)} calls unanswered within {limit} s")
            concurrent.futures.wait(futures)  # the last replies are being delivered
        results: List[Any] = []
        first_error: Optional[BaseException] = None
        for future in futures:
            error = future.exception()
            if error is None:
                results.append(future.result())
            else:
                if first_error is None:
                    first_error = error
                results.append(error)
        if first_error is not None and not return_exceptions:
            raise first_error
        return results

    def actor(self, name: str) -> "ActorHandle":
        """A handle whose attributes call ``name``'s methods:
        ``client.actor("bank").deposit({"account": "a", "amount": 5})``."""
        return ActorHandle(self, name)

    # -- operator requests -------------------------------------------------------------

    def status(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The ``status`` object: ``{"actors": [{"name", "kind", "state", "pid", ...}],
        "supervisor": {...}}``."""
        result: Dict[str, Any] = self.request("status", timeout=timeout)
        return result

    def checkpoint(self, actor: str, timeout: Optional[float] = None) -> Any:
        """Takes a checkpoint of ``actor`` now; returns ``{"generation", "last_seq"}``."""
        return self.request("checkpoint", timeout=timeout, actor=actor)

    def restart(self, actor: str, timeout: Optional[float] = None) -> Any:
        """Restarts ``actor``'s worker (from its newest checkpoint; nothing is lost)."""
        return self.request("restart", timeout=timeout, actor=actor)

    def reload(self, timeout: Optional[float] = None) -> Any:
        """Re-reads the configuration file; returns what was added, changed, removed."""
        return self.request("reload", timeout=timeout)

    def stop(self, timeout: Optional[float] = None) -> Any:
        """Stops the supervisor gracefully (final checkpoints, then exit 0)."""
        return self.request("stop", timeout=timeout)

    def stop_actor(self, actor: str, timeout: Optional[float] = None) -> Any:
        """Stops one actor: its accepted calls are answered, a final checkpoint is taken,
        its worker exits. Returns ``{"actor", "state": "STOPPED", "checkpoint"}`` once it
        has; until :meth:`start_actor`, its calls raise :class:`ActorStopped`."""
        return self.request("stop_actor", timeout=timeout, actor=actor)

    def start_actor(self, actor: str, timeout: Optional[float] = None) -> Any:
        """Starts an actor :meth:`stop_actor` stopped (or a DEAD one); returns
        ``{"actor", "state"}`` at once (its calls wait until it serves)."""
        return self.request("start_actor", timeout=timeout, actor=actor)

    def pid(self, actor: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """``{"pid"}`` of the supervisor, or with ``actor`` ``{"actor", "state", "pid",
        "program_pid"}`` (``None`` where there is no process)."""
        if actor is None:
            return self.request("pid", timeout=timeout)
        return self.request("pid", timeout=timeout, actor=actor)

    def metrics(self, timeout: Optional[float] = None) -> str:
        """Every metric, in the Prometheus text exposition format."""
        text: str = self.request("metrics", timeout=timeout)
        return text

    def export_state(self, actor: str, timeout: Optional[float] = None) -> bytes:
        """The actor's state as an export file (the bytes ``resurgam export`` writes), at
        its place in the actor's call order."""
        reply = self.request("export", timeout=timeout, actor=actor)
        return base64.b64decode(reply["file"], validate=True)

    def import_state(self, actor: str, file: bytes, timeout: Optional[float] = None) -> Any:
        """Installs an export file as the actor's state, at its place in the call order
        (calls before it are reflected, calls after it apply on top); another kind or a
        damaged file raises :class:`BadRequest`. Returns ``{"imported", "seq", "bytes"}``."""
        encoded = base64.b64encode(file).decode("ascii")
        return self.request("import", timeout=timeout, actor=actor, file=encoded)


class ActorMethod:
    """One method of one actor, callable: ``method(args=None, timeout=None, key=None)``."""

    __slots__ = ("_client", "_actor", "_method")

    def __init__(self, client: Client, actor: str, method: str) -> None:
        self._client = client
        self._actor = actor
        self._method = method

    def __call__(
        self, args: Any = None, timeout: Optional[float] = None, key: Optional[str] = None
    ) -> Any:
        """Calls the method and returns its reply (see :meth:`Client.call`)."""
        return self._client.call(self._actor, self._method, args, timeout=timeout, key=key)

    def call_async(self, args: Any = None, key: Optional[str] = None) -> "Future[Any]":
        """Sends the call and returns a future (see :meth:`Client.call_async`)."""
        return self._client.call_async(self._actor, self._method, args, key=key)

    def __repr__(self) -> str:
        return f"<resurgam method {self._actor}.{self._method}>"


class ActorHandle:
    """An actor seen as an object: ``handle.deposit(args)`` is
    ``client.call(actor, "deposit", args)``.

    Any attribute not starting with ``_`` is a method of the actor (this class defines
    no public attributes, so none can hide one); ``handle["name"]`` reaches methods
    whose names are not Python identifiers or start with ``_``.
    """

    __slots__ = ("_client", "_actor")

    def __init__(self, client: Client, actor: str) -> None:
        self._client = client
        self._actor = actor

    def __getattr__(self, method: str) -> ActorMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return ActorMethod(self._client, self._actor, method)

    def __getitem__(self, method: str) -> ActorMethod:
        return ActorMethod(self._client, self._actor, method)

    def __repr__(self) -> str:
        return f"<resurgam actor {self._actor!r} via {self._client.path!r}>"
