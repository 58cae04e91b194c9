#!/usr/bin/env python3
"""The workloads of `resurgam bench` on Ray, for a side-by-side comparison.

Actors are restartable Ray actors (`max_restarts=-1, max_task_retries=-1`) that checkpoint
their state the way the Ray docs show (pickle to a local file, loaded in `__init__`; see
"Fault Tolerance with Actor Checkpointing"). The checkpoint is written to a temporary
file and renamed over the old one, without fsync (as in the docs' example).

Writes one JSON document (to --out, or stdout) with the same shape and row ids as
`resurgam bench --json`, so `bench/compare.py` can put the two side by side. Progress
goes to stderr. Every figure is the median [min-max] over repeats of a per-repeat
statistic (a percentile or rate over many calls, or one recovery).

W6 (durability modes of the call log) has no Ray counterpart: Ray keeps no call log.
"""

import argparse
import json
import os
import pickle
import random
import signal
import statistics
import sys
import tempfile
import threading
import time

import ray

MIB = 1 << 20


def log(msg):
    print(f"ray bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------
# Actors (the docs' pattern: restore in __init__, checkpoint to a local file).


def _save(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _load(path, default):
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    return default


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class Counter:
    def __init__(self, path=None, every=0):
        self.path, self.every, self.since = path, every, 0
        self.value = _load(path, 0)

    def incr(self, n=1):
        self.value += n
        self.since += 1
        if self.every and self.since >= self.every:
            _save(self.path, self.value)
            self.since = 0
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class KV:
    def __init__(self, path=None, every=0):
        self.path, self.every, self.since = path, every, 0
        self.map = _load(path, {})

    def put(self, key, value):
        prev = self.map.get(key)
        self.map[key] = value
        self.since += 1
        if self.every and self.since >= self.every:
            self.checkpoint()
        return prev

    def get(self, key):
        return self.map.get(key)

    def checkpoint(self):
        _save(self.path, self.map)
        self.since = 0
        return True

    def pid(self):
        return os.getpid()


# ------------------------------------------------------------------------------------
# Statistics and /proc.


def pct(sorted_v, q):
    if not sorted_v:
        return float("nan")
    rank = max(1, min(len(sorted_v), int(-(-q * len(sorted_v) // 1))))
    return sorted_v[rank - 1]


def p50_p99(v):
    v = sorted(v)
    return pct(v, 0.50), pct(v, 0.99)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    return {"state": rest[0], "ppid": int(rest[1]), "ticks": int(rest[11]) + int(rest[12])}


def pss_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("Pss:", "Rss:"):
            vals[parts[0]] = int(parts[1])
    return vals.get("Pss:"), vals.get("Rss:")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st["state"] not in ("Z", "X"):
                kids.setdefault(st["ppid"], []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def machine():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kernel = open("/proc/sys/kernel/osrelease").read().strip() if os.path.exists("/proc/sys/kernel/osrelease") else None
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": kernel, "loadavg_start": loadavg(), "loadavg_end": None}


class Report:
    def __init__(self, args):
        self.rows, self.notes, self.failures, self.loads = [], [], [], []
        self.args = args

    def row(self, id_, workload, label, unit, better, samples, note=None):
        v = sorted(x for x in samples if x == x)
        if not v:
            self.notes.append(f"{id_}: no value measured")
            return
        row = {"id": id_, "workload": workload, "label": label, "unit": unit, "better": better,
               "median": statistics.median(v), "min": v[0], "max": v[-1], "n": len(v)}
        if note:
            row["note"] = note
        self.rows.append(row)


# ------------------------------------------------------------------------------------
# Load generators.


def sync_calls(method, args_fn, until, keep_starts=False):
    """One call at a time; returns (latencies_us, starts, elapsed_s)."""
    lat, starts = [], []
    t_start = time.perf_counter()
    i = 0
    while until(i):
        t = time.perf_counter()
        ray.get(method.remote(*args_fn(i)))
        lat.append((time.perf_counter() - t) * 1e6)
        if keep_starts:
            starts.append(t)
        i += 1
    return lat, starts, time.perf_counter() - t_start


def pipeline(method, args_fn, window, until):
    """Keeps between window/2 and window calls in flight; returns (completed, elapsed_s)."""
    refill = max(1, window // 2)
    t0 = time.perf_counter()
    sent, done, pending = 0, 0, []
    while sent < window and until(sent):
        pending.append(method.remote(*args_fn(sent)))
        sent += 1
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(refill, len(pending)))
        ray.get(ready)
        done += len(ready)
        k = 0
        while k < len(ready) and until(sent):
            pending.append(method.remote(*args_fn(sent)))
            sent += 1
            k += 1
    return done, time.perf_counter() - t0


def for_seconds(s):
    deadline = time.perf_counter() + s
    return lambda _i: time.perf_counter() < deadline


def count(n):
    return lambda i: i < n


# ------------------------------------------------------------------------------------
# Workloads.


def w1(rep, a):
    c = Counter.remote()
    ray.get(c.get.remote())
    sync_calls(c.incr, lambda i: (), count(200))
    n = 500 if a.quick else 1500
    p50, p99, rate = [], [], []
    for _ in range(a.repeats):
        lat, _, el = sync_calls(c.incr, lambda i: (), count(n))
        x, y = p50_p99(lat)
        p50.append(x)
        p99.append(y)
        rate.append(n / el)
    rep.row("w1.sync.p50_us", "W1", f"sync call p50 (ray.get(actor.incr.remote()), {n} calls per repeat)", "µs", "lower", p50)
    rep.row("w1.sync.p99_us", "W1", "sync call p99", "µs", "lower", p99)
    rep.row("w1.sync.calls_per_s", "W1", "sync calls/s, 1 client", "calls/s", "higher", rate)
    ray.kill(c)


def w2(rep, a):
    window = 1000
    dur = 0.5 if a.quick else 1.0
    c = Counter.remote()
    ray.get(c.get.remote())
    pipeline(c.incr, lambda i: (), window, for_seconds(dur / 4))
    one = []
    for _ in range(a.repeats):
        done, el = pipeline(c.incr, lambda i: (), window, for_seconds(dur))
        one.append(done / el)
    rep.row("w2.pipe_1x1.calls_per_s", "W2", f"pipelined, 1 actor × 1 client, window {window}", "calls/s", "higher", one)
    ray.kill(c)

    actors = [Counter.remote() for _ in range(8)]
    ray.get([x.get.remote() for x in actors])
    total, per = [], []
    for _ in range(a.repeats):
        results = [None] * 8
        deadline = time.perf_counter() + dur

        def client(i):
            results[i] = pipeline(actors[i].incr, lambda j: (), window, lambda _j: time.perf_counter() < deadline)

        ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        calls = sum(r[0] for r in results)
        longest = max(r[1] for r in results)
        total.append(calls / longest)
        per.append(calls / longest / 8)
    rep.row("w2.pipe_8x8.calls_per_s", "W2", "pipelined, 8 actors × 8 clients (driver threads), total", "calls/s", "higher", total)
    rep.row("w2.pipe_8x8.per_actor_calls_per_s", "W2", "pipelined, 8 actors × 8 clients, per actor", "calls/s", "higher", per)
    for x in actors:
        ray.kill(x)


def fill_kv(kv, nbytes):
    parts = max(1, -(-nbytes // (32 * MIB)))
    for p in range(parts):
        ray.get(kv.put.remote(f"big{p}", "x" * (nbytes // parts - 24)))


def w3(rep, a, tmp):
    sizes = [("1KiB", 1 << 10), ("1MiB", MIB), ("64MiB", 64 * MIB)]
    for label, nbytes in sizes:
        path = os.path.join(tmp, f"kv{label}.pkl")
        kv = KV.remote(path, 0)
        fill_kv(kv, nbytes)
        total = []
        # As many kills as resurgam's W3 times for this case: four times the repeats
        # up to 1 MiB of state (bench/src/workloads.rs, recovery_samples).
        kills = a.repeats * 4 if nbytes <= MIB else a.repeats
        for _ in range(kills):
            ray.get(kv.put.remote("n", -1))
            ray.get(kv.checkpoint.remote())
            pid = ray.get(kv.pid.remote())
            time.sleep(0.05)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            v = ray.get(kv.get.remote("n"))
            total.append((time.perf_counter() - t0) * 1e3)
            if v != -1:
                raise RuntimeError(f"kv{label} answered {v!r} after restart, expected -1")
        rep.row(f"w3.recovery.{label}.0.total_ms", "W3", f"kill → next reply, {label} state (restored from the pickle checkpoint)", "ms", "lower", total)
        ray.kill(kv)
    rep.notes.append("W3 on Ray: there is no call log, so nothing is replayed: calls after the last checkpoint are lost (see w3x)")

    for every in (100, 1):
        exactly_once(rep, a, tmp, every)


def exactly_once(rep, a, tmp, every):
    path = os.path.join(tmp, f"cnt{every}.pkl")
    c = Counter.remote(path, every)
    ray.get(c.get.remote())
    kills_per_round = 5 if a.quick else 10
    acked, lost, doubled, kills = [], [], [], []
    for _ in range(a.repeats):
        before = ray.get(c.get.remote())
        done = threading.Event()
        killed = [0]
        err = []

        def killer():
            try:
                rnd = random.Random()
                while killed[0] < kills_per_round:
                    time.sleep(0.02 + rnd.random() * 0.08)
                    pid = ray.get(c.pid.remote())
                    os.kill(pid, signal.SIGKILL)
                    killed[0] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                err.append(e)
            finally:
                done.set()

        t = threading.Thread(target=killer)
        t.start()
        n_ok, _ = pipeline(c.incr, lambda i: (), 200, lambda _i: not done.is_set())
        t.join()
        if err:
            raise err[0]
        after = ray.get(c.get.remote())
        delta = after - before
        acked.append(n_ok)
        lost.append(max(0, n_ok - delta))
        doubled.append(max(0, delta - n_ok))
        kills.append(killed[0])
    prefix = "w3x" if every == 100 else f"w3x_every{every}"
    what = f"checkpoint every {every} call(s)"
    rep.row(f"{prefix}.kills", "W3", f"kill -9 during a stream of incr ({what}; per round)", "kills", "neither", kills)
    rep.row(f"{prefix}.acked", "W3", "  increments acknowledged (per round)", "calls", "neither", acked)
    rep.row(f"{prefix}.lost", "W3", "  lost increments (acknowledged, not in the counter)", "calls", "lower", lost)
    rep.row(f"{prefix}.doubled", "W3", "  doubled increments (in the counter more than acknowledged)", "calls", "lower", doubled,
            note=f"totals over {a.repeats} rounds: {sum(kills)} kills, {sum(acked)} acknowledged, {sum(lost)} lost, {sum(doubled)} doubled")
    ray.kill(c)


def w4(rep, a):
    clk = os.sysconf("SC_CLK_TCK")
    for n in a.actors:
        t0 = time.perf_counter()
        actors = [Counter.remote() for _ in range(n)]
        ray.get([x.get.remote() for x in actors], timeout=600)
        start_ms = (time.perf_counter() - t0) * 1e3
        rep.row(f"w4.n{n}.start_ms", "W4", f"{n} actors: created → all answered a call", "ms", "lower", [start_ms])
        time.sleep(1)
        worker_pids = set(ray.get([x.pid.remote() for x in actors]))
        desc = descendants(os.getpid())
        system = [p for p in desc if p not in worker_pids and not cmdline(p).startswith("ray::")]
        pss_w = sorted(v[0] for v in (pss_rss_kib(p) for p in worker_pids) if v)
        rss_w = sorted(v[1] for v in (pss_rss_kib(p) for p in worker_pids) if v)
        pss_sys = sum(v[0] for v in (pss_rss_kib(p) for p in system) if v)
        rss_sys = sum(v[1] for v in (pss_rss_kib(p) for p in system) if v)
        names = sorted({(cmdline(p).split() or ["?"])[0].rsplit("/", 1)[-1] for p in system})
        rep.row(f"w4.n{n}.sup_pss_kib", "W4", f"{n} actors: Ray system processes' PSS (sum)", "KiB", "lower", [pss_sys],
                note=f"{len(system)} processes: {', '.join(names)[:200]}")
        rep.row(f"w4.n{n}.sup_rss_kib", "W4", f"{n} actors: Ray system processes' RSS (sum)", "KiB", "lower", [rss_sys])
        rep.row(f"w4.n{n}.worker_pss_kib", "W4", f"{n} actors: one actor worker's PSS (median)", "KiB", "lower", [pct(pss_w, 0.5)],
                note=f"all workers {sum(pss_w) / 1024:.1f} MiB")
        rep.row(f"w4.n{n}.worker_rss_kib", "W4", f"{n} actors: one actor worker's RSS (median)", "KiB", "lower", [pct(rss_w, 0.5)])
        s0 = sum((proc_stat(p) or {"ticks": 0})["ticks"] for p in system)
        w0 = sum((proc_stat(p) or {"ticks": 0})["ticks"] for p in worker_pids)
        time.sleep(10)
        s1 = sum((proc_stat(p) or {"ticks": 0})["ticks"] for p in system)
        w1_ = sum((proc_stat(p) or {"ticks": 0})["ticks"] for p in worker_pids)
        rep.row(f"w4.n{n}.sup_idle_cpu_ticks", "W4", f"{n} actors: Ray system processes' CPU while idle 10 s", "ticks", "lower", [s1 - s0],
                note=f"1 tick = {1000 // clk} ms")
        rep.row(f"w4.n{n}.workers_idle_cpu_ticks", "W4", f"{n} actors: all actor workers' CPU while idle 10 s", "ticks", "lower", [w1_ - w0])
        for x in actors:
            ray.kill(x)
        time.sleep(2)


def w5(rep, a, tmp):
    dur = 0.5 if a.quick else 1.0
    for label, every in (("every_1", 1), ("every_100", 100), ("never", 0)):
        kv = KV.remote(os.path.join(tmp, f"ck_{label}.pkl"), every)
        fill_kv(kv, MIB)
        ray.get(kv.checkpoint.remote())
        sync_rate, pipe_rate = [], []
        for _ in range(a.repeats):
            lat, _, el = sync_calls(kv.put, lambda i: ("n", i), for_seconds(dur))
            sync_rate.append(len(lat) / el)
            done, el = pipeline(kv.put, lambda i: ("n", i), 64, for_seconds(dur))
            pipe_rate.append(done / el)
        every_txt = label.replace("_", " ")
        rep.row(f"w5.ckpt_{label}.sync_calls_per_s", "W5", f"1 MiB kv, checkpoint {every_txt}: sync calls/s", "calls/s", "higher", sync_rate)
        rep.row(f"w5.ckpt_{label}.pipelined_calls_per_s", "W5", f"1 MiB kv, checkpoint {every_txt}: pipelined calls/s (window 64)", "calls/s", "higher", pipe_rate)
        ray.kill(kv)

    kvs = {"1MiB": KV.remote(os.path.join(tmp, "ck1.pkl"), 0), "64MiB": KV.remote(os.path.join(tmp, "ck64.pkl"), 0)}
    fill_kv(kvs["1MiB"], MIB)
    fill_kv(kvs["64MiB"], 64 * MIB)
    other = Counter.remote()
    ray.get(other.get.remote())
    stop = threading.Event()
    res = {}

    def caller():
        res["lat"], res["starts"], _ = sync_calls(other.incr, lambda i: (), lambda _i: not stop.is_set(), keep_starts=True)

    t = threading.Thread(target=caller)
    t.start()
    marks = []
    try:
        for _ in range(a.repeats):
            for label in ("1MiB", "64MiB"):
                quiet = time.perf_counter()
                time.sleep(0.3)
                ray.get(kvs[label].put.remote("n", 0))
                t0 = time.perf_counter()
                ray.get(kvs[label].checkpoint.remote())
                marks.append((label, quiet, t0, time.perf_counter()))
    finally:
        stop.set()
        t.join()
    for label in ("1MiB", "64MiB"):
        ck, during, dmax, base = [], [], [], []
        for (l, quiet, t0, t1) in marks:
            if l != label:
                continue
            ck.append((t1 - t0) * 1e3)
            d = sorted(x for s, x in zip(res["starts"], res["lat"]) if t0 <= s < t1)
            b = sorted(x for s, x in zip(res["starts"], res["lat"]) if quiet <= s < t0)
            during.append(pct(d, 0.99))
            dmax.append(pct(d, 1.0))
            base.append(pct(b, 0.99))
        rep.row(f"w5.ckpt_op_{label}.ms", "W5", f"checkpoint() round trip, {label} kv (pickle to a local file)", "ms", "lower", ck)
        rep.row(f"w5.ckpt_op_{label}.other_p99_us", "W5", "  p99 of another actor's sync calls during it", "µs", "lower", during)
        rep.row(f"w5.ckpt_op_{label}.other_max_us", "W5", "  max of another actor's sync calls during it", "µs", "lower", dmax)
        rep.row(f"w5.ckpt_op_{label}.other_base_p99_us", "W5", "  same actor's p99 in the 0.3 s before", "µs", "lower", base)
    for x in list(kvs.values()) + [other]:
        ray.kill(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, half-length windows")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. w1,w3")
    ap.add_argument("--actors", default="100", help="W4 actor counts, comma-separated (default 100)")
    ap.add_argument("--out", default="-", help="write the JSON here (default stdout; Ray's own messages also go to stdout)")
    a = ap.parse_args()
    a.repeats = a.repeats or (3 if a.quick else 5)
    a.actors = [int(x) for x in a.actors.split(",") if x]
    only = {x.strip().lower() for x in a.only.split(",") if x.strip()}
    rep = Report(a)
    mach = machine()
    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="ray-bench-")
    try:
        # A fresh local cluster per workload, so no worker process of one workload
        # (Ray keeps idle workers around) loads the next; W4 (many actors) runs last.
        for name, fn in (("w1", lambda: w1(rep, a)), ("w2", lambda: w2(rep, a)), ("w3", lambda: w3(rep, a, tmp)),
                         ("w5", lambda: w5(rep, a, tmp)), ("w4", lambda: w4(rep, a))):
            if only and name not in only:
                continue
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=2 * 1024 * MIB,
                     log_to_driver=False, logging_level="ERROR")
            l0, t0 = loadavg(), time.perf_counter()
            log(f"{name.upper()} … (load {l0[0] if l0 else '?'})")
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a failed workload is reported, the rest still run
                log(f"{name.upper()} failed: {e!r}")
                rep.failures.append({"workload": name, "error": repr(e)})
            finally:
                rep.loads.append({"workload": name, "loadavg_start": l0, "loadavg_end": loadavg(),
                                  "seconds": time.perf_counter() - t0})
                ray.shutdown()
                time.sleep(2)
        rep.notes.append("W6 has no Ray counterpart (Ray keeps no call log)")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for f in os.listdir(tmp):
            try:
                os.remove(os.path.join(tmp, f))
            except OSError:
                pass
        try:
            os.rmdir(tmp)
        except OSError:
            pass
    mach["loadavg_end"] = loadavg()
    out = {"tool": "ray", "version": ray.__version__, "target": "local Ray cluster (ray.init)", "repeats": a.repeats,
           "quick": a.quick, "machine": mach, "clk_tck": os.sysconf("SC_CLK_TCK"), "seconds": time.perf_counter() - t_all,
           "rows": rep.rows, "loads": rep.loads, "failures": rep.failures, "notes": rep.notes}
    text = json.dumps(out, indent=2) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as f:
            f.write(text)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
