"""The actor side (``resurgam.serve``) driven the way the supervisor drives it.

Each test starts a real child process running an actor script under ``resurgam.serve``,
with one end of a socket pair as its file descriptor 3 (``RESURGAM_FD=3``), and plays
the supervisor's part of ``docs/exec-protocol.md`` on the other end.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest
from typing import Any, Dict, List, Tuple

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)

import resurgam  # noqa: E402
from resurgam._frames import (  # noqa: E402
    OUTGOING_LIMITS,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    ProtocolError,
)

HEADER = struct.Struct(">cI")
#: Longest a test waits for one frame or one exit.
WAIT = 30.0

ACTORS = textwrap.dedent(
    '''
    import hashlib
    import sys

    import resurgam


    class Bank:
        def __init__(self):
            self.balances = {}

        def deposit(self, args):
            account = args["account"]
            self.balances[account] = self.balances.get(account, 0) + args["amount"]
            return self.balances[account]

        def get(self, args):
            return self.balances if args is None else self.balances.get(args, 0)

        def fail(self, args):
            raise ValueError("no such account: %s" % args)

        def refuse(self, args):
            raise resurgam.BadRequest("refuse takes nothing you have")

        def shout(self, args):
            for i in range(args):
                print("shouting line %d" % i)
            sys.stdout.flush()
            return "done"

        def nan(self, args):
            return float("nan")

        def count(self):
            return len(self.balances)

        def _secret(self, args):
            return "leaked"

        @property
        def total(self):
            raise AssertionError("a property must never run")

        def get_state(self):
            return self.balances

        def load_state(self, state):
            if state == {"poison": 1}:
                raise RuntimeError("cannot load this")
            self.balances = state


    class Blob:
        def __init__(self):
            self.data = b""

        def fill(self, size):
            self.data = bytes(range(256)) * (size // 256)
            return hashlib.sha256(self.data).hexdigest()

        def digest(self, args):
            return [len(self.data), hashlib.sha256(self.data).hexdigest()]

        def get_state(self):
            return bytearray(self.data)

        def load_state(self, state):
            assert type(state) is bytes, type(state)
            self.data = state


    class Plain:
        """No get_state/load_state: the instance's __dict__ is the state."""

        def __init__(self):
            self.n = 0
            self.log = []

        def incr(self, args):
            self.n += 1 if args is None else args
            self.log.append(self.n)
            return self.n

        def get(self, args):
            return {"n": self.n, "log": self.log}


    if __name__ == "__main__":
        resurgam.serve({"bank": Bank, "blob": Blob, "plain": Plain}[sys.argv[1]])
    '''
)

# Puts the inherited socket on fd 3, as resurgam does, then runs the actor script.
TRAMPOLINE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Reads exactly n bytes (fewer only at end of input)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            del view
            return buf[:got]
        got += k
    return buf


class Worker:
    """A child process serving one actor class, and the supervisor's end of its channel."""

    def __init__(self, test: "ServeTest", kind: str, fd_env: bool = True) -> None:
        self.test = test
        self.out_path = os.path.join(test.tmp, f"out-{id(self)}")
        self.err_path = os.path.join(test.tmp, f"err-{id(self)}")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        self.sock.settimeout(WAIT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESURGAM_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PYTHON_DIR, os.environ.get("PYTHONPATH")) if p
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if fd_env:
            env["RESURGAM_FD"] = "3"
            env["RESURGAM_ACTOR"] = kind
        argv = [sys.executable, "-c", TRAMPOLINE, str(child.fileno()), test.script, kind]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        child.close()
        test.addCleanup(self.kill)

    def kill(self) -> None:
        """Kills and reaps the child (cleanup)."""
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stderr(self) -> str:
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self) -> str:
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def send(self, ftype: bytes, body: bytes = b"") -> None:
        self.sock.sendall(HEADER.pack(ftype, len(body)) + body)

    def send_json(self, ftype: bytes, value: Any) -> None:
        self.send(ftype, json.dumps(value).encode())

    def recv(self) -> Tuple[bytes, bytes]:
        """The next frame; fails the test (with the child's stderr) at end of input."""
        header = recv_exact(self.sock, HEADER.size)
        if len(header) < HEADER.size:
            self.test.fail(f"channel closed; the actor's stderr:\n{self.stderr()}")
        ftype, length = HEADER.unpack(header)
        body = recv_exact(self.sock, length)
        self.test.assertEqual(len(body), length, "truncated frame")
        return ftype, bytes(body)

    def hello(self) -> Dict[str, Any]:
        """Sends the supervisor's hello; returns the program's."""
        self.send_json(b"H", {"protocol": 1, "actor": "test"})
        ftype, body = self.recv()
        self.test.assertEqual(ftype, b"H")
        answer: Dict[str, Any] = json.loads(body)
        return answer

    def call(self, method: str, args: Any = None) -> Tuple[bytes, Any]:
        """One call; returns (b"R", result) or (b"E", {"kind", "message"})."""
        self.send_json(b"C", {"method": method, "args": args})
        ftype, body = self.recv()
        self.test.assertIn(ftype, (b"R", b"E"))
        return ftype, json.loads(body)

    def ok(self, method: str, args: Any = None) -> Any:
        ftype, value = self.call(method, args)
        self.test.assertEqual(ftype, b"R", value)
        return value

    def error(self, method: str, args: Any = None) -> Dict[str, str]:
        """A call that must fail; returns its ``{"kind", "message"}``."""
        ftype, value = self.call(method, args)
        self.test.assertEqual(ftype, b"E", value)
        self.test.assertEqual(set(value), {"kind", "message"})
        error: Dict[str, str] = value
        return error

    def save(self) -> bytes:
        self.send(b"S")
        ftype, body = self.recv()
        self.test.assertEqual(ftype, b"T", body[:200])
        return body

    def load(self, state: bytes) -> Tuple[bytes, bytes]:
        self.send(b"L", state)
        return self.recv()

    def exit_status(self) -> int:
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.test.fail("the actor did not exit")

    def close_and_wait(self) -> int:
        self.sock.shutdown(socket.SHUT_RDWR)
        return self.exit_status()


class ServeTest(unittest.TestCase):
    """resurgam.serve against a fake supervisor end."""

    tmp: str
    script: str

    @classmethod
    def setUpClass(cls) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="resurgam-actor-test-")
        cls.addClassCleanup(tmp.cleanup)
        cls.tmp = tmp.name
        cls.script = os.path.join(tmp.name, "actors.py")
        with open(cls.script, "w") as f:
            f.write(ACTORS)

    def test_hello_is_answered_with_protocol_1_and_the_program(self) -> None:
        w = Worker(self, "bank")
        self.assertEqual(
            w.hello(), {"protocol": 1, "program": f"resurgam-python/{resurgam.__version__}"}
        )
        self.assertEqual(w.close_and_wait(), 0)

    def test_a_newer_supervisor_still_gets_protocol_1(self) -> None:
        w = Worker(self, "bank")
        w.send_json(b"H", {"protocol": 2, "actor": "x", "future": True})
        ftype, body = w.recv()
        self.assertEqual((ftype, json.loads(body)["protocol"]), (b"H", 1))
        self.assertEqual(w.close_and_wait(), 0)

    def test_calls_reply_with_json_and_state_persists_between_calls(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        self.assertEqual(w.ok("deposit", {"account": "a", "amount": 5}), 5)
        self.assertEqual(w.ok("deposit", {"account": "a", "amount": 7}), 12)
        self.assertEqual(w.ok("get", "a"), 12)
        self.assertEqual(w.ok("get"), {"a": 12})
        self.assertEqual(w.close_and_wait(), 0)

    def test_ten_thousand_pipelined_calls_are_answered_in_order(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        n = 10_000
        body = json.dumps({"method": "deposit", "args": {"account": "a", "amount": 1}}).encode()
        frame = HEADER.pack(b"C", len(body)) + body
        # All requests go out at once while the answers are read, as resurgam does: the
        # program answers each call before it applies the next one, so a side that only
        # wrote would stall both once the answers filled the socket buffer.
        sender = threading.Thread(target=w.sock.sendall, args=(frame * n,))
        sender.start()
        replies = [w.recv() for _ in range(n)]
        sender.join()
        self.assertEqual([t for t, _ in replies], [b"R"] * n)
        self.assertEqual([int(b) for _, b in replies], list(range(1, n + 1)))
        self.assertEqual(w.close_and_wait(), 0)

    def test_an_exception_is_an_actor_error_and_the_actor_lives_on(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.ok("deposit", {"account": "a", "amount": 1})
        self.assertEqual(
            w.error("fail", "zz"),
            {"kind": "ActorError", "message": "ValueError: no such account: zz"},
        )
        err = w.error("deposit", {"account": "a"})
        self.assertEqual(err["kind"], "ActorError")
        self.assertEqual(err["message"], "KeyError: 'amount'")
        self.assertEqual(w.ok("get", "a"), 1)
        self.assertEqual(w.close_and_wait(), 0)

    def test_a_raised_bad_request_keeps_its_kind(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        self.assertEqual(
            w.error("refuse"), {"kind": "BadRequest", "message": "refuse takes nothing you have"}
        )
        self.assertEqual(w.close_and_wait(), 0)

    def test_unknown_private_and_reserved_methods_are_unknown_method_listing_the_methods(
        self,
    ) -> None:
        w = Worker(self, "bank")
        w.hello()
        listing = "methods: count, deposit, fail, get, nan, refuse, shout"
        for name in ("nope", "_secret", "__init__", "get_state", "load_state", "total", ""):
            err = w.error(name)
            self.assertEqual(err["kind"], "UnknownMethod", name)
            self.assertEqual(err["message"], f"unknown method {json.dumps(name)}; {listing}")
        self.assertEqual(w.ok("get"), {})
        self.assertEqual(w.close_and_wait(), 0)

    def test_a_method_without_parameters_takes_no_args(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        self.assertEqual(w.ok("count"), 0)
        self.assertEqual(w.error("count", 5)["kind"], "BadRequest")
        self.assertEqual(w.close_and_wait(), 0)

    def test_a_reply_that_is_not_json_is_an_actor_error(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        err = w.error("nan")
        self.assertEqual(err["kind"], "ActorError")
        self.assertTrue(err["message"].startswith("reply is not JSON: ValueError"), err)
        self.assertEqual(w.close_and_wait(), 0)

    def test_dict_state_round_trips_through_save_and_load(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.ok("deposit", {"account": "a", "amount": 5})
        w.ok("deposit", {"account": "b", "amount": 2})
        state = w.save()
        self.assertEqual(state[:1], b"P")
        self.assertEqual(pickle.loads(state[1:]), {"a": 5, "b": 2})
        self.assertEqual(w.close_and_wait(), 0)

        again = Worker(self, "bank")
        again.hello()
        self.assertEqual(again.load(state), (b"K", b""))
        self.assertEqual(again.ok("get"), {"a": 5, "b": 2})
        self.assertEqual(again.ok("deposit", {"account": "a", "amount": 1}), 6)
        self.assertEqual(again.close_and_wait(), 0)

    def test_bytes_state_passes_through_untouched(self) -> None:
        w = Worker(self, "blob")
        w.hello()
        digest = w.ok("fill", 1024)
        state = w.save()
        self.assertEqual(state, b"B" + bytes(range(256)) * 4)
        self.assertEqual(w.close_and_wait(), 0)

        again = Worker(self, "blob")
        again.hello()
        self.assertEqual(again.load(b"B" + bytes(range(256)) * 4), (b"K", b""))
        self.assertEqual(again.ok("digest"), [1024, digest])
        self.assertEqual(again.close_and_wait(), 0)

    def test_a_64_mib_state_round_trips(self) -> None:
        size = 64 << 20
        w = Worker(self, "blob")
        w.hello()
        digest = w.ok("fill", size)
        state = w.save()
        self.assertEqual(len(state), 1 + size)
        self.assertEqual(state[:1], b"B")
        self.assertEqual(hashlib.sha256(memoryview(state)[1:]).hexdigest(), digest)
        self.assertEqual(w.close_and_wait(), 0)

        again = Worker(self, "blob")
        again.hello()
        self.assertEqual(again.load(state), (b"K", b""))
        self.assertEqual(again.ok("digest"), [size, digest])
        self.assertEqual(again.close_and_wait(), 0)

    def test_without_get_state_the_instance_dict_is_the_state(self) -> None:
        w = Worker(self, "plain")
        w.hello()
        w.ok("incr")
        w.ok("incr", 4)
        state = w.save()
        self.assertEqual(state[:1], b"P")
        self.assertEqual(pickle.loads(state[1:]), {"n": 5, "log": [1, 5]})
        self.assertEqual(w.close_and_wait(), 0)

        again = Worker(self, "plain")
        again.hello()
        self.assertEqual(again.load(state), (b"K", b""))
        self.assertEqual(again.ok("incr"), 6)
        self.assertEqual(again.ok("get"), {"n": 6, "log": [1, 5, 6]})
        self.assertEqual(again.close_and_wait(), 0)

    def test_a_state_that_cannot_be_loaded_is_answered_with_an_error(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        ftype, body = w.load(b"Pnot a pickle")
        self.assertEqual(ftype, b"E")
        self.assertEqual(json.loads(body)["kind"], "ActorError")
        ftype, body = w.load(b"P" + pickle.dumps({"poison": 1}))
        self.assertEqual(
            (ftype, json.loads(body)),
            (b"E", {"kind": "ActorError", "message": "RuntimeError: cannot load this"}),
        )
        ftype, body = w.load(b"Zwhat")
        self.assertEqual(ftype, b"E")
        self.assertIn("unknown state encoding", json.loads(body)["message"])
        ftype, body = w.load(b"")
        self.assertEqual(ftype, b"E")
        self.assertEqual(w.close_and_wait(), 0)

    def test_prints_to_stdout_do_not_disturb_the_protocol(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        self.assertEqual(w.ok("shout", 2000), "done")
        self.assertEqual(w.ok("deposit", {"account": "a", "amount": 3}), 3)
        self.assertEqual(w.close_and_wait(), 0)
        lines = w.stdout().splitlines()
        self.assertEqual(len(lines), 2000)
        self.assertEqual(lines[-1], "shouting line 1999")

    def test_the_end_of_the_channel_ends_the_program_with_status_0(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.ok("deposit", {"account": "a", "amount": 1})
        self.assertEqual(w.close_and_wait(), 0)
        self.assertEqual(w.stderr(), "")

    def test_eof_before_the_hello_is_status_0(self) -> None:
        w = Worker(self, "bank")
        self.assertEqual(w.close_and_wait(), 0)

    def test_an_unknown_frame_type_exits_with_status_2(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.send(b"X", b"garbage")
        self.assertEqual(w.exit_status(), 2)
        self.assertIn("unknown frame type", w.stderr())

    def test_a_call_that_is_not_json_exits_with_status_2(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.send(b"C", b"{not json")
        self.assertEqual(w.exit_status(), 2)
        self.assertIn("not JSON", w.stderr())

    def test_a_call_before_the_hello_exits_with_status_2(self) -> None:
        w = Worker(self, "bank")
        w.send_json(b"C", {"method": "get", "args": None})
        self.assertEqual(w.exit_status(), 2)
        self.assertIn("before the hello", w.stderr())

    def test_an_oversized_call_exits_with_status_2(self) -> None:
        w = Worker(self, "bank")
        w.hello()
        w.sock.sendall(HEADER.pack(b"C", (64 << 20) + 1))
        self.assertEqual(w.exit_status(), 2)
        self.assertIn("over its limit", w.stderr())

    def test_without_resurgam_fd_the_program_exits_with_status_2(self) -> None:
        w = Worker(self, "bank", fd_env=False)
        self.assertEqual(w.exit_status(), 2)
        self.assertIn("must be started by resurgam", w.stderr())


class FramesTest(unittest.TestCase):
    """The framing layer in-process, over a socket pair."""

    def setUp(self) -> None:
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.b.settimeout(WAIT)

    def test_frames_split_anywhere_are_reassembled(self) -> None:
        sent = [(b"R", b"x" * n) for n in (0, 1, 4, 5, 100, 70_000, 3, 300_000, 7)]
        sent.append((b"T", b"B" + b"y" * 100_000))

        def write() -> None:
            writer = FrameWriter(self.a)
            for ftype, body in sent[:-1]:
                writer.add(ftype, body)
            writer.add(b"T", b"B", b"y" * 100_000)
            writer.flush()
            self.a.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=write)
        thread.start()
        self.addCleanup(thread.join)
        reader = FrameReader(self.b, limits=OUTGOING_LIMITS, chunk=16)  # most frames are bigger
        frames: List[Tuple[bytes, bytes]] = []
        while True:
            frame = reader.pop()
            while frame is not None:
                frames.append((frame[0], bytes(frame[1])))
                frame = reader.pop()
            if not reader.fill():
                break
        self.assertEqual(reader.buffered, 0)
        self.assertEqual(frames, sent)

    def test_limits_are_enforced_both_ways(self) -> None:
        writer = FrameWriter(self.a, limits={b"R": 10})
        with self.assertRaises(FrameTooLarge):
            writer.add(b"R", b"x" * 11)
        with self.assertRaises(ValueError):
            writer.add(b"Q", b"")
        self.a.sendall(HEADER.pack(b"C", 11))
        reader = FrameReader(self.b, limits={b"C": 10})
        self.assertTrue(reader.fill())
        with self.assertRaises(ProtocolError):
            reader.pop()


if __name__ == "__main__":
    unittest.main()
