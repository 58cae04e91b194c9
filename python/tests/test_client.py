"""The client side (``resurgam.Client``), mostly against a real supervisor.

The supervisor binary is ``$RESURGAM_BIN``, else built with
``cargo build -p resurgam --bin resurgam`` from the repository root (the binary is then
``$CARGO_TARGET_DIR/debug/resurgam``, default ``target/``). Without cargo and without
``$RESURGAM_BIN`` those tests are skipped. A few tests use a fake control socket
instead, to make replies come out of order, late, refused or malformed on purpose.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Dict, List, Optional
from unittest import mock

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYTHON_DIR)
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)

import resurgam  # noqa: E402
from resurgam import Client  # noqa: E402

#: Longest wait for the supervisor to come up (then the test fails with its log).
STARTUP = 20.0
#: Environment the supervisor must not inherit from whoever runs the tests (the same
#: list as SCRUBBED_ENV in tests/util/mod.rs).
SCRUBBED = (
    "RESURGAM_SOCKET",
    "RESURGAM_LOG",
    "RESURGAM_FD",
    "RESURGAM_ACTOR",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

_binary: Optional[str] = None


def supervisor_binary() -> str:
    """``$RESURGAM_BIN``, else the binary built by cargo (built once per test run)."""
    global _binary
    if _binary is not None:
        return _binary
    explicit = os.environ.get("RESURGAM_BIN")
    if explicit:
        _binary = explicit
        return _binary
    cargo = shutil.which("cargo")
    if cargo is None:
        raise unittest.SkipTest("no $RESURGAM_BIN and no cargo to build the supervisor")
    build = subprocess.run(
        [cargo, "build", "--quiet", "-p", "resurgam", "--bin", "resurgam"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if build.returncode != 0:
        raise RuntimeError("cargo build failed:\n" + build.stdout.decode("utf-8", "replace"))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    _binary = os.path.join(os.path.abspath(os.path.join(REPO, target)), "debug", "resurgam")
    return _binary


class Supervisor:
    """A ``resurgam run`` in a temporary directory, killed and reaped by cleanup."""

    def __init__(
        self, actors: Dict[str, str], add_cleanup: Callable[..., None], extra: str = ""
    ) -> None:
        binary = supervisor_binary()
        tmp = tempfile.TemporaryDirectory(prefix="resurgam-client-test-")
        add_cleanup(tmp.cleanup)
        self.dir = tmp.name
        self.socket = os.path.join(self.dir, "state", "run", "control.sock")
        self.log_path = os.path.join(self.dir, "supervisor.log")
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write('[supervisor]\nstate_dir = "state"\n' + extra + "\n")
            for name, kind in actors.items():
                f.write(f'[[actor]]\nname = "{name}"\nkind = "{kind}"\n')
        self.argv = [binary, "run", "--config", config]
        self.actors = actors
        self.stopped_pids: List[int] = []
        self.proc = self.spawn()
        add_cleanup(self.kill)
        self.wait_alive(actors)

    def spawn(self) -> "subprocess.Popen[bytes]":
        """Starts ``resurgam run`` on the config (its output appended to the log)."""
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                self.argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def restart(self) -> None:
        """Starts a new supervisor on the same config and state (the old one must have
        exited) and waits until its actors are ALIVE."""
        self.proc = self.spawn()
        self.wait_alive(self.actors)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def wait_alive(self, actors: Dict[str, str]) -> None:
        """Bounded poll until status shows every actor ALIVE."""
        deadline = time.monotonic() + STARTUP
        last: Any = None
        with Client(self.socket, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"the supervisor exited with {self.proc.returncode}:\n{self.log()}"
                    )
                try:
                    last = client.status()
                    states = {a["name"]: a["state"] for a in last["actors"]}
                    if states == {name: "ALIVE" for name in actors}:
                        return
                except resurgam.Error as e:
                    last = e
                time.sleep(0.05)
        raise AssertionError(f"actors not ALIVE within {STARTUP} s ({last}):\n{self.log()}")

    def pid(self, actor: str) -> int:
        with Client(self.socket, timeout=5.0) as client:
            for a in client.status()["actors"]:
                if a["name"] == actor:
                    return int(a["pid"])
        raise AssertionError(f"no actor {actor}")

    def sigstop(self, pid: int) -> None:
        self.stopped_pids.append(pid)
        os.kill(pid, signal.SIGSTOP)

    def sigcont(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        for pid in self.stopped_pids:
            self.sigcont(pid)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


ACTORS = {
    "counter": "counter",
    "store": "kv",
    "pipe": "counter",
    "many": "counter",
    "threads": "counter",
    "slow": "counter",
    "poison": "counter",
}


class ClientTest(unittest.TestCase):
    """One supervisor shared by the tests; each test uses actors of its own."""

    sup: Supervisor

    @classmethod
    def setUpClass(cls) -> None:
        cls.sup = Supervisor(ACTORS, cls.addClassCleanup, extra="max_request_bytes = 4096")

    def client(self, timeout: Optional[float] = 20.0) -> Client:
        client = Client(self.sup.socket, timeout=timeout)
        self.addCleanup(client.close)
        return client

    def test_call_returns_the_ok_value(self) -> None:
        c = self.client()
        before = c.call("counter", "get")
        self.assertEqual(c.call("counter", "incr", 5), before + 5)
        self.assertEqual(c.call("counter", "incr"), before + 6)
        self.assertEqual(c.call("counter", "get"), before + 6)

    def test_status_checkpoint_restart_reload(self) -> None:
        c = self.client()
        status = c.status()
        self.assertEqual({a["name"] for a in status["actors"]}, set(ACTORS))
        self.assertIn("pid", status["supervisor"])
        c.call("counter", "incr")
        checkpoint = c.checkpoint("counter")
        self.assertEqual(set(checkpoint), {"generation", "last_seq"})
        self.assertIsInstance(c.restart("counter"), dict)
        self.assertIsInstance(c.call("counter", "get"), int)  # waits for the new worker
        self.assertEqual(c.reload()["added"], [])
        with self.assertRaises(resurgam.UnknownActor):
            c.checkpoint("nobody")

    def test_stop_start_pid_metrics_and_state_export_import(self) -> None:
        c = self.client()
        c.call("counter", "incr", 3)
        exported = c.export_state("counter")
        self.assertTrue(exported.startswith(b"RSGMSTAT"), exported[:16])
        value = c.call("counter", "get")
        c.call("counter", "incr", 10)
        self.assertEqual(c.import_state("counter", exported)["imported"], "counter")
        self.assertEqual(c.call("counter", "get"), value)
        with self.assertRaises(resurgam.BadRequest):
            c.import_state("counter", exported[:-1])
        self.assertIsInstance(c.pid()["pid"], int)
        self.assertIsInstance(c.pid("counter")["pid"], int)
        self.assertIn("resurgam_", c.metrics())
        self.assertEqual(c.stop_actor("counter")["state"], "STOPPED")
        with self.assertRaises(resurgam.ActorStopped):
            c.call("counter", "get")
        self.assertIsNone(c.pid("counter")["pid"])
        c.start_actor("counter")
        self.assertEqual(c.call("counter", "get"), value)

    def test_errors_raise_the_class_of_their_kind(self) -> None:
        c = self.client()
        with self.assertRaises(resurgam.UnknownActor) as e:
            c.call("nobody", "get")
        self.assertEqual(e.exception.kind, "UnknownActor")
        self.assertIn("nobody", e.exception.message)
        self.assertEqual(str(e.exception), "UnknownActor: " + e.exception.message)
        with self.assertRaises(resurgam.UnknownMethod) as unknown:
            c.call("counter", "nope")
        self.assertIn("incr", unknown.exception.message)
        with self.assertRaises(resurgam.BadRequest):
            c.call("store", "put", 5)
        with self.assertRaises(resurgam.BadRequest):
            c.call("store", "put", {"key": "k"})
        with self.assertRaises(resurgam.BadRequest):
            c.call("counter", "incr", "x")
        for error in (resurgam.UnknownActor, resurgam.UnknownMethod, resurgam.BadRequest):
            self.assertTrue(issubclass(error, resurgam.Error))
        self.assertEqual(c.call("store", "get", {"key": "never"}), None)

    def test_a_request_over_max_request_bytes_fails_alone(self) -> None:
        c = self.client()
        small = c.call_async("store", "put", {"key": "small", "value": 1})
        big = c.call_async("store", "put", {"key": "big", "value": "x" * 10_000})
        after = c.call_async("store", "get", {"key": "small"})
        self.assertIsNone(small.result(20))
        self.assertIsInstance(big.exception(20), resurgam.BadRequest)
        self.assertEqual(after.result(20), 1)

    def test_a_thousand_pipelined_calls_come_back_in_the_actors_order(self) -> None:
        c = self.client()
        start = c.call("pipe", "get")
        futures = [c.call_async("pipe", "incr") for _ in range(1000)]
        self.assertEqual([f.result(20) for f in futures], list(range(start + 1, start + 1001)))

    def test_call_many_returns_results_in_order_and_raises_the_first_error_last(self) -> None:
        c = self.client()
        start = c.call("many", "get")
        results = c.call_many("many", [("incr", 1)] * 100 + ["get"])
        self.assertEqual(results, list(range(start + 1, start + 101)) + [start + 100])
        with self.assertRaises(resurgam.UnknownMethod):
            c.call_many("many", [("incr", 1), ("nope", None), ("incr", 1), ("oops", 3)])
        self.assertEqual(c.call("many", "get"), start + 102)  # the calls around it ran
        mixed = c.call_many("many", [("incr", 1), ("incr", "x"), ("get",)], return_exceptions=True)
        self.assertEqual(mixed[0], start + 103)
        self.assertIsInstance(mixed[1], resurgam.BadRequest)
        self.assertEqual(mixed[2], start + 103)
        self.assertEqual(c.call_many("many", []), [])

    def test_an_actor_handle_calls_methods_by_attribute(self) -> None:
        c = self.client()
        store = c.actor("store")
        self.assertIsNone(store.put({"key": "city", "value": ["Lyon", 1]}))
        self.assertEqual(store.get({"key": "city"}), ["Lyon", 1])
        self.assertGreaterEqual(store.len(), 1)
        self.assertEqual(store["delete"]({"key": "city"}), ["Lyon", 1])
        self.assertIsNone(store.get.call_async({"key": "city"}).result(20))
        with self.assertRaises(AttributeError):
            store._private  # noqa: B018
        with self.assertRaises(resurgam.UnknownMethod):
            store.fly()

    def test_a_timeout_raises_timeout_and_the_late_reply_is_discarded(self) -> None:
        c = self.client()
        start = c.call("slow", "get")
        pid = self.sup.pid("slow")
        self.sup.sigstop(pid)
        try:
            began = time.monotonic()
            with self.assertRaises(resurgam.Timeout) as e:
                c.call("slow", "incr", timeout=0.3)
            self.assertGreaterEqual(time.monotonic() - began, 0.3)
            self.assertIsInstance(e.exception, TimeoutError)
            self.assertEqual(e.exception.kind, "Timeout")
            with Client(self.sup.socket, timeout=0.2) as short:  # the default timeout
                with self.assertRaises(resurgam.Timeout):
                    short.call("slow", "get")
        finally:
            self.sup.sigcont(pid)
        # The timed-out incr still ran; its late reply must not answer this call.
        self.assertEqual(c.call("slow", "incr"), start + 2)
        self.assertEqual(c.call("slow", "get"), start + 2)

    def test_a_poison_call_fails_with_call_failed(self) -> None:
        c = self.client()
        with self.assertRaises(resurgam.CallFailed):
            c.call("poison", "crash")
        self.assertIsInstance(c.call("poison", "incr"), int)

    def test_one_client_is_safe_from_many_threads(self) -> None:
        c = self.client()
        start = c.call("threads", "get")
        seen: List[int] = []
        errors: List[BaseException] = []

        def work() -> None:
            try:
                mine = [c.call("threads", "incr") for _ in range(200)]
                seen.extend(mine)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(seen), list(range(start + 1, start + 1601)))
        self.assertEqual(c.call("threads", "get"), start + 1600)

    def test_the_socket_is_found_through_resurgam_socket(self) -> None:
        with mock.patch.dict(os.environ, {"RESURGAM_SOCKET": self.sup.socket}):
            with Client(timeout=20) as c:
                self.assertEqual(c.path, self.sup.socket)
                self.assertIn("actors", c.status())

    def test_a_future_outlives_its_client(self) -> None:
        future = Client(self.sup.socket).call_async("counter", "get")
        gc.collect()
        self.assertIsInstance(future.result(20), int)

    def test_a_closed_client_is_unreachable(self) -> None:
        c = Client(self.sup.socket, timeout=20)
        with c:
            c.status()
        with self.assertRaises(resurgam.Unreachable):
            c.status()
        c.close()  # twice is harmless


class StopTest(unittest.TestCase):
    """Tests that end their own supervisor."""

    def test_stop_ends_the_supervisor_with_status_0(self) -> None:
        sup = Supervisor({"counter": "counter"}, self.addCleanup)
        with Client(sup.socket, timeout=20) as c:
            c.call("counter", "incr")
            self.assertEqual(c.stop(), {"stopping": True})
            self.assertEqual(sup.proc.wait(20), 0)
            with self.assertRaises(resurgam.Unreachable):
                c.call("counter", "get")

    def test_a_dropped_connection_fails_pending_calls_with_unreachable(self) -> None:
        sup = Supervisor({"counter": "counter"}, self.addCleanup)
        with Client(sup.socket, timeout=20) as c:
            sup.sigstop(sup.pid("counter"))
            futures = [c.call_async("counter", "incr") for _ in range(5)]
            sup.proc.kill()
            sup.proc.wait()
            for future in futures:
                error = future.exception(20)
                self.assertIsInstance(error, resurgam.Unreachable)
                self.assertIsInstance(error, ConnectionError)


class UnreachableTest(unittest.TestCase):
    """No supervisor at all."""

    def test_a_missing_socket_is_unreachable(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            c = Client(os.path.join(tmp, "missing.sock"))
            with self.assertRaises(resurgam.Unreachable) as e:
                c.status()
            self.assertIsInstance(e.exception, ConnectionError)
            self.assertIn("missing.sock", e.exception.message)
            with self.assertRaises(resurgam.Unreachable):
                Client(os.path.join(tmp, "missing.sock")).call("a", "b")

    def test_a_socket_nobody_listens_on_is_unreachable(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "stale.sock")
            s = socket.socket(socket.AF_UNIX)
            s.bind(path)
            s.close()
            with self.assertRaises(resurgam.Unreachable):
                Client(path).connect()


class SocketPathTest(unittest.TestCase):
    """Discovery, as the CLI does it."""

    def test_the_argument_wins(self) -> None:
        env = {"RESURGAM_SOCKET": "/env.sock"}
        self.assertEqual(resurgam.socket_path("/arg.sock", env), "/arg.sock")

    def test_then_resurgam_socket(self) -> None:
        env = {"RESURGAM_SOCKET": "/env.sock", "RUNTIME_DIRECTORY": "/run/r"}
        self.assertEqual(resurgam.socket_path(None, env), "/env.sock")

    def test_then_the_first_runtime_directory(self) -> None:
        env = {"RESURGAM_SOCKET": "", "RUNTIME_DIRECTORY": "/run/a:/run/b", "STATE_DIRECTORY": "/s"}
        self.assertEqual(resurgam.socket_path(None, env), "/run/a/control.sock")

    def test_then_the_first_state_directory(self) -> None:
        env = {"RUNTIME_DIRECTORY": "", "STATE_DIRECTORY": "/var/lib/r:/other"}
        self.assertEqual(resurgam.socket_path(None, env), "/var/lib/r/run/control.sock")

    def test_else_the_packaged_services_socket_when_the_default_is_none(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            service = os.path.join(tmp, "control.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(listener.close)
            listener.bind(service)
            with mock.patch("resurgam.client.SERVICE_SOCKET", service):
                self.assertEqual(resurgam.socket_path(None, {}), service)
                # Never instead of a directory the environment names.
                env = {"RUNTIME_DIRECTORY": "/run/a"}
                self.assertEqual(resurgam.socket_path(None, env), "/run/a/control.sock")

    def test_else_the_local_default(self) -> None:
        self.assertEqual(resurgam.socket_path(None, {}), "resurgam-state/run/control.sock")
        self.assertEqual(
            resurgam.socket_path(None, {"STATE_DIRECTORY": ":/x"}),
            "resurgam-state/run/control.sock",
        )


class ErrorsTest(unittest.TestCase):
    """The error classes."""

    def test_every_kind_has_its_class(self) -> None:
        kinds = [
            "BadRequest", "Unauthorized", "UnknownActor", "UnknownMethod", "ActorError",
            "ActorDead", "CallFailed", "Busy", "Timeout", "ActorStopped", "Unreachable",
        ]  # fmt: skip
        # Every kind the supervisor can send (its ErrorKind enum) has a class here; the
        # SDK's own extra is the client-side Unreachable.
        with open(os.path.join(REPO, "shared", "src", "protocol.rs"), encoding="utf-8") as f:
            source = f.read()
        enum = re.search(r"pub enum ErrorKind \{([^}]*)\}", source)
        assert enum is not None, "ErrorKind not found in shared/src/protocol.rs"
        rust = set(re.findall(r"^\s*([A-Z][A-Za-z]*),", enum.group(1), re.MULTILINE))
        self.assertGreater(len(rust), 5)
        self.assertEqual(set(kinds) - rust, {"Unreachable"})
        self.assertEqual(rust - set(kinds), set())
        for kind in kinds:
            error = resurgam.error_from(kind, "why")
            self.assertIs(type(error), getattr(resurgam, kind))
            self.assertEqual((error.kind, error.message, str(error)), (kind, "why", f"{kind}: why"))
            self.assertIsInstance(error, resurgam.Error)

    def test_an_unknown_kind_is_a_plain_error_with_that_kind(self) -> None:
        error = resurgam.error_from("Martian", "hello")
        self.assertIs(type(error), resurgam.Error)
        self.assertEqual((error.kind, str(error)), ("Martian", "Martian: hello"))
        again = pickle.loads(pickle.dumps(error))
        self.assertEqual(
            (type(again), again.kind, again.message), (resurgam.Error, "Martian", "hello")
        )

    def test_errors_pickle_and_builtins_catch_the_network_ones(self) -> None:
        error = pickle.loads(pickle.dumps(resurgam.Unreachable("gone")))
        self.assertEqual((type(error), error.message), (resurgam.Unreachable, "gone"))
        self.assertIsInstance(error, ConnectionError)
        self.assertIsInstance(resurgam.Timeout("late"), TimeoutError)
        self.assertFalse(issubclass(resurgam.ActorError, OSError))


class _Listener:
    """A Unix socket in a temporary directory, listening; ``serve`` runs in a thread
    that the test's cleanup ends by closing the socket."""

    def __init__(self, test: unittest.TestCase) -> None:
        tmp = tempfile.TemporaryDirectory()
        test.addCleanup(tmp.cleanup)
        self.path = os.path.join(tmp.name, "fake.sock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def start(self, test: unittest.TestCase) -> None:
        """Starts serving; the test's cleanup stops it."""
        self.thread.start()
        test.addCleanup(self.stop)

    def stop(self) -> None:
        """Closes the socket and waits (bounded) for the serving thread."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        except OSError:
            pass
        self.listener.close()
        self.thread.join(20)

    def serve(self) -> None:
        """Answers connections until the socket is closed."""
        raise NotImplementedError


class FakeServer(_Listener):
    """A control socket played by the test: ``handler(lines, conn)`` answers."""

    def __init__(
        self,
        test: unittest.TestCase,
        handler: Callable[[List[Dict[str, Any]], socket.socket], None],
        batch: int = 1,
    ) -> None:
        super().__init__(test)
        self.listener.settimeout(20)
        self.handler = handler
        self.batch = batch
        self.start(test)

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as lines:
            requests = []
            for line in lines:
                requests.append(json.loads(line))
                if len(requests) == self.batch:
                    self.handler(requests, conn)
                    requests = []


def reply(
    conn: socket.socket, rid: Any, ok: Any = None, err: Optional[Dict[str, str]] = None
) -> None:
    body: Dict[str, Any] = {"id": rid}
    if err is not None:
        body["err"] = err
    else:
        body["ok"] = ok
    conn.sendall(json.dumps(body).encode() + b"\n")


class FakeServerTest(unittest.TestCase):
    """Replies the real supervisor rarely produces on demand."""

    def test_replies_in_any_order_are_matched_by_id(self) -> None:
        def answer(requests: List[Dict[str, Any]], conn: socket.socket) -> None:
            for r in reversed(requests):
                reply(conn, r["id"], ok=r["args"])

        server = FakeServer(self, answer, batch=50)
        with Client(server.path, timeout=20) as c:
            futures = [c.call_async("a", "echo", i) for i in range(50)]
            self.assertEqual([f.result(20) for f in futures], list(range(50)))

    def test_a_refused_connection_raises_the_refusal(self) -> None:
        def refuse(requests: List[Dict[str, Any]], conn: socket.socket) -> None:
            reply(conn, None, err={"kind": "Unauthorized", "message": "uid 7 may not"})
            conn.shutdown(socket.SHUT_RDWR)

        server = FakeServer(self, refuse)
        with Client(server.path, timeout=20) as c:
            with self.assertRaises(resurgam.Unauthorized) as e:
                c.status()
            self.assertEqual(e.exception.message, "uid 7 may not")

    def test_a_late_reply_is_dropped_and_unknown_kinds_are_plain_errors(self) -> None:
        held: List[Dict[str, Any]] = []

        def answer(requests: List[Dict[str, Any]], conn: socket.socket) -> None:
            r = requests[0]
            if r["method"] == "slow":
                held.append(r)  # answered after the next request
            else:
                for late in held:
                    reply(conn, late["id"], ok="late")
                reply(conn, r["id"], err={"kind": "Martian", "message": "no"})

        server = FakeServer(self, answer)
        with Client(server.path) as c:
            with self.assertRaises(resurgam.Timeout):
                c.call("a", "slow", timeout=0.2)
            with self.assertRaises(resurgam.Error) as e:
                c.call("a", "next", timeout=20)
            self.assertEqual((type(e.exception), e.exception.kind), (resurgam.Error, "Martian"))

    def test_a_reply_that_is_not_json_drops_the_connection(self) -> None:
        def garbage(requests: List[Dict[str, Any]], conn: socket.socket) -> None:
            conn.sendall(b"HTTP/1.1 400 Bad Request\n")

        server = FakeServer(self, garbage)
        with Client(server.path, timeout=20) as c:
            with self.assertRaises(resurgam.Unreachable) as e:
                c.status()
            self.assertIn("not a resurgam control socket", e.exception.message)

    def test_args_that_are_not_json_are_refused_before_sending(self) -> None:
        server = FakeServer(self, lambda requests, conn: None)
        with Client(server.path, timeout=20) as c:
            with self.assertRaises(ValueError):
                c.call("a", "b", float("nan"))
            with self.assertRaises(TypeError):
                c.call("a", "b", {1, 2})


class KeyedCallTest(unittest.TestCase):
    """Idempotency keys against a real supervisor (durability "log")."""

    def test_the_same_key_again_gets_the_first_reply_and_runs_once(self) -> None:
        sup = Supervisor({"counter": "counter"}, self.addCleanup, extra='durability = "log"')
        with Client(sup.socket, timeout=20) as c:
            key = resurgam.new_key()
            self.assertEqual(c.call("counter", "incr", 1, key=key), 1)
            self.assertEqual(c.actor("counter").incr(1, key=key), 1)
            self.assertEqual(c.call("counter", "get"), 1)
            with self.assertRaises(resurgam.BadRequest):
                c.call("counter", "incr", 2, key=key)
            self.assertEqual(c.call("counter", "get"), 1)

    def test_a_keyed_call_waits_out_a_supervisor_restart_and_runs_once(self) -> None:
        sup = Supervisor({"counter": "counter"}, self.addCleanup, extra='durability = "log"')
        with Client(sup.socket, timeout=20, retry_for=60) as c:
            self.assertEqual(c.call("counter", "incr", 1, key="k1"), 1)
            sup.proc.kill()
            sup.proc.wait()
            results: List[Any] = []
            retry = threading.Thread(
                target=lambda: results.append(c.call("counter", "incr", 1, key="k1"))
            )
            retry.start()  # the supervisor is down: it retries until it is back
            sup.restart()
            retry.join(60)
            self.assertFalse(retry.is_alive())
            self.assertEqual(results, [1])
            self.assertEqual(c.call("counter", "get"), 1)


#: What :class:`MultiFakeServer` does with a request: reply with this body, ``None``:
#: close the connection without a reply, ``HOLD``: never reply.
HOLD: Dict[str, Any] = {}


class MultiFakeServer(_Listener):
    """A control socket played by the test, one connection after another:
    ``answer(n, request)`` says what to do with the n-th request (counting over every
    connection): the reply's body, ``None`` or ``HOLD``. Every request is recorded."""

    def __init__(
        self,
        test: unittest.TestCase,
        answer: Callable[[int, Dict[str, Any]], Optional[Dict[str, Any]]],
    ) -> None:
        super().__init__(test)
        self.answer = answer
        self.requests: List[Dict[str, Any]] = []
        self.start(test)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    self.requests.append(request)
                    body = self.answer(len(self.requests) - 1, request)
                    if body is None:
                        break
                    if body is not HOLD:
                        conn.sendall(json.dumps({"id": request["id"], **body}).encode() + b"\n")


def _busy() -> Dict[str, Any]:
    return {"err": {"kind": "Busy", "message": "queue full"}}


class KeyedRetryTest(unittest.TestCase):
    """How a keyed call is retried, against a fake control socket."""

    def test_a_lost_connection_and_busy_are_retried_with_the_same_key(self) -> None:
        answers = [None, _busy(), {"ok": 7}]
        server = MultiFakeServer(self, lambda n, r: answers[n])
        with Client(server.path, timeout=20) as c:
            self.assertEqual(c.call("a", "incr", 1, key="k9"), 7)
        self.assertEqual(len(server.requests), 3)
        for r in server.requests:
            self.assertEqual((r["key"], r["args"], r["method"]), ("k9", 1, "incr"))

    def test_the_supervisors_timeout_is_retried_but_not_the_callers(self) -> None:
        late = {"err": {"kind": "Timeout", "message": "may or may not have run"}}
        answers = [late, {"ok": 3}, HOLD]
        server = MultiFakeServer(self, lambda n, r: answers[n])
        with Client(server.path, timeout=20) as c:
            self.assertEqual(c.call("a", "incr", 1, key="k"), 3)
            with self.assertRaises(resurgam.Timeout):
                c.call("a", "incr", 1, key="k2", timeout=0.2)  # no answer at all
        self.assertEqual([r["key"] for r in server.requests], ["k", "k", "k2"])

    def test_other_errors_and_unkeyed_calls_are_not_retried(self) -> None:
        answers = [{"err": {"kind": "BadRequest", "message": "key reused"}}, None]
        server = MultiFakeServer(self, lambda n, r: answers[n])
        with Client(server.path, timeout=20) as c:
            with self.assertRaises(resurgam.BadRequest):
                c.call("a", "incr", 1, key="k")
            with self.assertRaises(resurgam.Unreachable):
                c.call("a", "incr", 1)
        self.assertEqual(len(server.requests), 2)

    def test_an_unreachable_supervisor_is_given_up_on_after_retry_for(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            c = Client(os.path.join(tmp, "missing.sock"), retry_for=0.1)
            with self.assertRaises(resurgam.Unreachable):
                c.call("a", "incr", 1, key="k")

    def test_a_supervisor_that_reads_nothing_is_unreachable_not_a_hang(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        with tempfile.TemporaryDirectory() as tmp, listener:
            path = os.path.join(tmp, "stuck.sock")
            listener.bind(path)
            listener.listen(1)
            outcome: List[BaseException] = []

            def call() -> None:
                # A request far larger than the socket's buffer: the write blocks.
                with Client(path, timeout=0.3, retry_for=0.5) as c:
                    try:
                        c.call("a", "put", "x" * (8 << 20), key="k")
                    except resurgam.Error as e:
                        outcome.append(e)

            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            listener.settimeout(20)  # a client that never connects fails the test
            conn, _ = listener.accept()
            with conn:
                caller.join(60)
                self.assertFalse(caller.is_alive(), "the call hung on a stuck supervisor")
            self.assertEqual(len(outcome), 1)
            self.assertIsInstance(outcome[0], resurgam.Unreachable)

    def test_new_keys_are_unique_valid_keys(self) -> None:
        keys = {resurgam.new_key() for _ in range(1000)}
        self.assertEqual(len(keys), 1000)
        for key in keys:
            self.assertRegex(key, r"^[0-9a-f]{32}$")


if __name__ == "__main__":
    unittest.main()
