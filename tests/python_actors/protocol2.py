"""A program that speaks a future version of the exec protocol, without the SDK.

It answers resurgam's hello with ``{"protocol": 2}`` and then waits for the end of the
channel. A supervisor that speaks version 1 must refuse it (the actor becomes DEAD with
a reason naming both versions) rather than restart it forever.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import BinaryIO, Tuple


def read_frame(rfile: BinaryIO) -> Tuple[bytes, bytes]:
    """One frame ``(type, body)``; exits quietly at the end of the channel."""
    header = rfile.read(5)
    if len(header) < 5:
        raise SystemExit(0)
    (length,) = struct.unpack(">I", header[1:])
    return header[:1], rfile.read(length)


def main() -> None:
    """Answers the hello with version 2, then reads until the channel ends."""
    sock = socket.socket(fileno=int(os.environ["RESURGAM_FD"]))
    rfile = sock.makefile("rb")
    kind, _ = read_frame(rfile)
    assert kind == b"H", kind
    body = json.dumps({"protocol": 2, "program": "a-future-sdk/2.0"}).encode()
    sock.sendall(b"H" + struct.pack(">I", len(body)) + body)
    while sock.recv(65536):
        pass


if __name__ == "__main__":
    main()
