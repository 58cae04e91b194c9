#!/usr/bin/env python3
"""Side-by-side table of `resurgam bench --json` and `bench/ray/bench_ray.py` results.

Usage: compare.py RESURGAM_JSON RAY_JSON [PREVIOUS_JSON] > table.md

For every figure both sides measured (same row id, or the Ray row a resurgam row names
in "pairs_with": W7's Python exec actor against Ray's Python actors of W1-W3) it prints
both medians with their [min-max] over repeats and the ratio "how many times better
resurgam is": Ray / resurgam for figures where lower is better (latency, time, memory),
resurgam / Ray where higher is better (calls/s). With PREVIOUS_JSON (the same `resurgam
bench` run with an earlier binary, in the same session) it adds that binary's figure and
the ratio "how many times better the new binary is". It then checks the targets of
issues 5, 8 and 12 and lists the figures only one side has.
"""

import json
import sys


def load(path):
    text = open(path, encoding="utf-8").read()
    # Ray may print its own messages before the document when writing to stdout.
    start = text.find("{\n")
    return json.loads(text[start if start >= 0 else 0 :])


def num(x):
    if x != x:
        return "-"
    a = abs(x)
    if a >= 100 or a == 0:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cell(r):
    return f"{num(r['median'])} [{num(r['min'])}–{num(r['max'])}]"


def ratio(res, ray):
    if res["better"] == "lower" and res["median"] > 0:
        return ray["median"] / res["median"]
    if res["better"] == "higher" and ray["median"] > 0:
        return res["median"] / ray["median"]
    return None


def machine_line(d):
    m = d.get("machine", {})
    la = lambda k: (m.get(k) or ["?"])[0]
    return (f"{d['tool']} {d.get('version', '?')}: {m.get('nproc')} CPUs ({m.get('cpu_model')}), "
            f"Linux {m.get('kernel')}, load {la('loadavg_start')} → {la('loadavg_end')}, "
            f"{d.get('repeats')} repeats, {d.get('seconds', 0):.0f} s")


def times(q):
    return "-" if q is None else f"{q:.1f}×"


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    res, ray = load(sys.argv[1]), load(sys.argv[2])
    prev = load(sys.argv[3]) if len(sys.argv) == 4 else None
    rows_ray = {r["id"]: r for r in ray["rows"]}
    rows_prev = {r["id"]: r for r in prev["rows"]} if prev else {}
    out = []
    out.append("# resurgam vs Ray, same machine, one run\n")
    out.append(f"* {machine_line(res)}")
    if prev:
        out.append(f"* previous binary: {machine_line(prev)}")
    out.append(f"* {machine_line(ray)}")
    out.append("* cells: median [min–max] over repeats; ratio = how many times better resurgam is\n")
    if prev:
        out.append("| id | figure | unit | resurgam | previous | vs previous | Ray | vs Ray |")
        out.append("|---|---|---|---|---|---|---|---|")
    else:
        out.append("| id | figure | unit | resurgam | Ray | ratio |")
        out.append("|---|---|---|---|---|---|")
    ratios = {}
    prev_ratios = {}
    paired_ray = set()
    for r in res["rows"]:
        other = r.get("pairs_with") or r["id"]
        y = rows_ray.get(other)
        if not y:
            continue
        paired_ray.add(other)
        q = ratio(r, y)
        ratios[r["id"]] = q
        rid = r["id"] if other == r["id"] else f"{r['id']} (Ray: {other})"
        if prev:
            p = rows_prev.get(r["id"])
            pq = ratio(r, p) if p else None
            prev_ratios[r["id"]] = pq
            pc = cell(p) if p else "-"
            out.append(f"| {rid} | {r['label'].strip()} | {r['unit']} | {cell(r)} | {pc} | {times(pq)} | {cell(y)} | {times(q)} |")
        else:
            out.append(f"| {rid} | {r['label'].strip()} | {r['unit']} | {cell(r)} | {cell(y)} | {times(q)} |")

    targets = [
        ("w1.sync.p50_us", 20, "issue 5: sync call p50 ≥ 20× faster than Ray's"),
        ("w2.pipe_1x1.calls_per_s", 50, "issue 5: pipelined calls/s ≥ 50× Ray's (1 actor)"),
        ("w2.pipe_8x8.calls_per_s", 50, "issue 5: pipelined calls/s ≥ 50× Ray's (8 actors × 8 clients)"),
        ("w7.sync.p50_us", 5, "issue 8: Python exec actor sync call p50 ≥ 5× faster than Ray's"),
        ("w7.pipe_1x1.calls_per_s", 20, "issue 8: Python exec actor pipelined calls/s ≥ 20× Ray's (1 actor × 1 client)"),
        ("w7.recovery.program.1MiB.0.total_ms", 10,
         "issue 8: Python exec actor kill -9 (program) → serving, 1 MiB, ≥ 10× faster than Ray's restart"),
        ("w7.recovery.worker.1MiB.0.total_ms", 10,
         "issue 8: Python exec actor kill -9 (worker) → serving, 1 MiB, ≥ 10× faster than Ray's restart"),
    ]
    targets += [
        ("w1.sync.p50_us", 20, "issue 12: sync call p50 ≥ 20× faster than Ray's"),
        ("w2.pipe_1x1.calls_per_s", 100, "issue 12: pipelined calls/s ≥ 100× Ray's (1 actor)"),
    ]
    out.append("\n## Ratio targets\n")
    out.append("| target | measured ratio | met |")
    out.append("|---|---|---|")
    for rid, want, text in targets:
        q = ratios.get(rid)
        out.append(f"| {text} | {times(q)} | {'-' if q is None else ('yes' if q >= want else 'NO')} |")
    rows_res = {r["id"]: r for r in res["rows"]}
    absolute = [
        ("w1.sync.p50_us", 30, "issue 12: sync call p50 ≤ 30 µs"),
        ("w1.sync.p99_us", 200, "issue 12: sync call p99 ≤ 200 µs"),
        ("w3.recovery.1KiB.0.total_ms", 1, "issue 12: kill -9 → serving, 1 KiB, ≤ 1 ms"),
        ("w3.recovery.1MiB.1000.total_ms", 5, "issue 12: kill -9 → serving, 1 MiB + 1,000 calls, ≤ 5 ms"),
        ("w3.recovery.64MiB.0.total_ms", 50, "issue 12: 64 MiB restored ≤ 50 ms (kill → serving)"),
    ]
    out.append("\n## Absolute targets\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    for rid, limit, text in absolute:
        r = rows_res.get(rid)
        out.append(f"| {text} | {cell(r) if r else '-'} | {'-' if not r else ('yes' if r['median'] <= limit else 'NO')} |")
    if prev:
        out.append("\n## Against the previous binary\n")
        out.append("| target | measured ratio | met |")
        out.append("|---|---|---|")
        for rid, text in (
            ("w2.pipe_1x1.calls_per_s", "issue 12: pipelined calls/s (1 actor) not lower than the previous binary's"),
            ("w2.pipe_8x8.calls_per_s", "issue 12: pipelined calls/s (8 × 8) not lower than the previous binary's"),
        ):
            q = prev_ratios.get(rid)
            out.append(f"| {text} | {times(q)} | {'-' if q is None else ('yes' if q >= 1 else 'NO')} |")

    only_res = [r for r in res["rows"] if (r.get("pairs_with") or r["id"]) not in rows_ray]
    only_ray = [r for r in ray["rows"] if r["id"] not in paired_ray]
    for title, rows in (("Only resurgam measured", only_res), ("Only Ray measured", only_ray)):
        if rows:
            out.append(f"\n## {title}\n")
            out.append("| id | figure | unit | median [min–max] |")
            out.append("|---|---|---|---|")
            for r in rows:
                note = f" ({r['note']})" if r.get("note") else ""
                out.append(f"| {r['id']} | {r['label'].strip()}{note} | {r['unit']} | {cell(r)} |")
    for d in (res, ray):
        for f in d.get("skipped", []):
            out.append(f"\n**{d['tool']} {f['workload'].upper()} skipped**: {f['error']}")
        for f in d.get("failures", []):
            out.append(f"\n**{d['tool']} {f['workload'].upper()} failed**: {f['error']}")
        for n in d.get("notes", []):
            out.append(f"\n{d['tool']} note: {n}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
