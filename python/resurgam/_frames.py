"""Framing of the exec worker protocol (``docs/exec-protocol.md``), for the actor side.

Every message, both ways, is one frame::

    1 byte   type, one ASCII letter
    4 bytes  length N of the body, unsigned big-endian
    N bytes  body

:class:`FrameReader` reads big chunks from the socket into one buffer and hands out
every complete frame in it, so a pipelined burst of calls costs one ``recv`` per
megabyte instead of two per call. A frame too big for that buffer (a large state in an
``L``) is read straight into a buffer of its exact size: no copy grows with the square
of the size. :class:`FrameWriter` collects answers and sends them with as few
``sendall`` calls as possible; large bodies are sent as they are, never joined.

Limits (enforced on both directions): ``H``, ``E``, ``C`` and ``R`` bodies at most
64 MiB, ``T`` and ``L`` (state) at most 2 GiB.
"""

from __future__ import annotations

import socket
import struct
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple, Union

__all__ = [
    "HEADER_SIZE",
    "MAX_JSON_BODY",
    "MAX_STATE_BODY",
    "INCOMING_LIMITS",
    "OUTGOING_LIMITS",
    "ProtocolError",
    "FrameTooLarge",
    "FrameReader",
    "FrameWriter",
]

_HEADER = struct.Struct(">cI")
#: Size of a frame header: the type byte and the 4-byte length.
HEADER_SIZE = _HEADER.size
#: Largest body of a JSON frame (``H``, ``C``, ``R``, ``E``).
MAX_JSON_BODY = 64 << 20
#: Largest body of a state frame (``L``, ``T``).
MAX_STATE_BODY = 2 << 30

#: Frame types the supervisor may send, with the largest body accepted for each.
INCOMING_LIMITS: Dict[bytes, int] = {
    b"H": MAX_JSON_BODY,
    b"L": MAX_STATE_BODY,
    b"C": MAX_JSON_BODY,
    b"S": MAX_JSON_BODY,  # empty by the protocol; tolerated and ignored up to this
}
#: Frame types the program may send, with the largest body allowed for each.
OUTGOING_LIMITS: Dict[bytes, int] = {
    b"H": MAX_JSON_BODY,
    b"K": 0,
    b"R": MAX_JSON_BODY,
    b"T": MAX_STATE_BODY,
    b"E": MAX_JSON_BODY,
}

#: Size of the receive buffer: one ``recv`` reads up to this much.
READ_CHUNK = 1 << 20
#: Bodies at least this long are sent as separate chunks instead of being copied into
#: the output buffer.
_SEPARATE_BODY = 64 << 10

#: A frame body: ``bytes`` for frames that fit the receive buffer, a ``bytearray`` of the
#: exact size for larger ones.
if TYPE_CHECKING:
    Body = Union[bytes, bytearray]


class ProtocolError(Exception):
    """The peer broke the framing rules (unknown type, body over its limit)."""


class FrameTooLarge(ValueError):
    """A frame to send is over the protocol's limit for its type."""


class FrameReader:
    """Reads frames from a blocking stream socket, many per ``recv``.

    Use :meth:`pop` until it returns ``None`` (no complete frame is buffered), then
    :meth:`fill` (one blocking ``recv``; ``False`` at end of input), and so on.
    Frames are checked against ``limits`` as soon as their header is complete:
    an unknown type or an oversized length raises :class:`ProtocolError`.
    """

    def __init__(
        self,
        sock: socket.socket,
        limits: Optional[Dict[bytes, int]] = None,
        chunk: int = READ_CHUNK,
    ) -> None:
        self._sock = sock
        self._limits = INCOMING_LIMITS if limits is None else limits
        self._buf = bytearray(max(chunk, HEADER_SIZE))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # A frame larger than the buffer: its type, its exact-size body, bytes filled.
        self._big_type = b""
        self._big: Optional[bytearray] = None
        self._big_filled = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (part of a frame, at end of input)."""
        if self._big is not None:
            return HEADER_SIZE + self._big_filled
        return self._end - self._start

    def pop(self) -> Optional[Tuple[bytes, Body]]:
        """Returns the next complete buffered frame as ``(type, body)``, else ``None``."""
        big = self._big
        if big is not None:
            if self._big_filled < len(big):
                return None
            self._big = None
            return self._big_type, big
        start = self._start
        available = self._end - start
        if available < HEADER_SIZE:
            return None
        ftype, length = _HEADER.unpack_from(self._buf, start)
        limit = self._limits.get(ftype)
        if limit is None:
            raise ProtocolError(f"unknown frame type {ftype!r}")
        if length > limit:
            raise ProtocolError(
                f"frame {ftype.decode('ascii', 'replace')} has a body of {length} bytes, "
                f"over its limit of {limit}"
            )
        end = start + HEADER_SIZE + length
        if end <= self._end:
            body = bytes(self._view[start + HEADER_SIZE : end])
            if end == self._end:
                self._start = self._end = 0
            else:
                self._start = end
            return ftype, body
        if HEADER_SIZE + length > len(self._buf):
            # Too big for the buffer: move what we have into an exact-size body and
            # let fill() read the rest straight into it.
            big = bytearray(length)
            with self._view[start + HEADER_SIZE : self._end] as body_part:
                big[: len(body_part)] = body_part
                self._big_filled = len(body_part)
            self._big_type = ftype
            self._big = big
            self._start = self._end = 0
        return None

    def fill(self) -> bool:
        """Blocks for more input. Returns ``False`` at end of input (or reset)."""
        try:
            big = self._big
            if big is not None:
                with memoryview(big) as view:
                    n = self._sock.recv_into(view[self._big_filled :])
                self._big_filled += n
                return n > 0
            if self._start == self._end:
                self._start = self._end = 0
            elif self._start > 0:
                # Keep the partial frame at the front (it is small, or a frame that fits
                # the buffer and is copied once).
                rest = bytes(self._view[self._start : self._end])
                self._buf[: len(rest)] = rest
                self._start, self._end = 0, len(rest)
            if self._end == len(self._buf):
                raise RuntimeError("FrameReader.fill() called before pop() emptied the buffer")
            n = self._sock.recv_into(self._view[self._end :])
            self._end += n
            return n > 0
        except ConnectionResetError:
            return False


class FrameWriter:
    """Collects outgoing frames and sends them in as few ``sendall`` calls as possible.

    :meth:`add` never blocks; :meth:`flush` sends everything collected, in order. The
    protocol requires a flush before blocking for more input.
    """

    def __init__(self, sock: socket.socket, limits: Optional[Dict[bytes, int]] = None) -> None:
        self._sock = sock
        self._limits = OUTGOING_LIMITS if limits is None else limits
        self._small = bytearray()
        # Chunks to send before ``_small``: earlier small frames and large bodies.
        self._chunks: List[Union[bytes, bytearray]] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        """Bytes collected and not yet sent."""
        return self._pending

    def add(self, ftype: bytes, *parts: bytes) -> None:
        """Queues one frame whose body is the concatenation of ``parts``.

        Raises :class:`FrameTooLarge` when the body is over the limit for ``ftype``.
        """
        length = 0
        for part in parts:
            length += len(part)
        limit = self._limits.get(ftype)
        if limit is None:
            raise ValueError(f"frame type {ftype!r} may not be sent")
        if length > limit:
            raise FrameTooLarge(
                f"a {ftype.decode('ascii', 'replace')} body of {length} bytes is over "
                f"the limit of {limit}"
            )
        small = self._small
        small += _HEADER.pack(ftype, length)
        for part in parts:
            if len(part) >= _SEPARATE_BODY:
                self._chunks.append(small)
                self._chunks.append(part)
                small = self._small = bytearray()
            else:
                small += part
        self._pending += HEADER_SIZE + length

    def add_checked(self, ftype: bytes, body: bytes) -> None:
        """Queues a small frame whose type and length the caller has checked."""
        self._small += _HEADER.pack(ftype, len(body))
        if len(body) >= _SEPARATE_BODY:
            self._chunks.append(self._small)
            self._chunks.append(body)
            self._small = bytearray()
        else:
            self._small += body
        self._pending += HEADER_SIZE + len(body)

    def flush(self) -> None:
        """Sends everything collected (blocking). Socket errors propagate."""
        if not self._pending:
            return
        chunks, small = self._chunks, self._small
        self._chunks, self._small, self._pending = [], bytearray(), 0
        for chunk in chunks:
            if chunk:
                self._sock.sendall(chunk)
        if small:
            self._sock.sendall(small)
