"""A program that answers resurgam's hello twice, without the SDK.

Both hellos go out in one write, so the second is waiting in the worker's buffer when
the first request is about to be sent: a frame that answers no request. resurgam must
treat it as a crash (never as the answer to that request); since the program does the
same at every start, the actor ends DEAD with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import struct


def main() -> None:
    """Reads the hello, answers it twice, then reads until the channel ends."""
    sock = socket.socket(fileno=int(os.environ["RESURGAM_FD"]))
    header = sock.recv(5, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header[1:])
    sock.recv(length, socket.MSG_WAITALL)
    body = json.dumps({"protocol": 1}).encode()
    hello = b"H" + struct.pack(">I", len(body)) + body
    sock.sendall(hello + hello)
    while sock.recv(65536):
        pass


if __name__ == "__main__":
    main()
