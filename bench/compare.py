#!/usr/bin/env python3
"""Side-by-side table of `resurgam bench --json` and `bench/ray/bench_ray.py` results.

Usage: compare.py RESURGAM_JSON RAY_JSON > table.md

For every figure both sides measured (same row id, or the Ray row a resurgam row names
in "pairs_with": W7's Python exec actor against Ray's Python actors of W1-W3) it prints
both medians with their [min-max] over repeats and the ratio "how many times better
resurgam is": Ray / resurgam for figures where lower is better (latency, time, memory),
resurgam / Ray where higher is better (calls/s). It then checks the ratio targets of
issues 5 and 8 and lists the figures only one side has.
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


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    res, ray = load(sys.argv[1]), load(sys.argv[2])
    rows_ray = {r["id"]: r for r in ray["rows"]}
    out = []
    out.append("# resurgam vs Ray, same machine, one run\n")
    out.append(f"* {machine_line(res)}")
    out.append(f"* {machine_line(ray)}")
    out.append("* cells: median [min–max] over repeats; ratio = how many times better resurgam is\n")
    out.append("| id | figure | unit | resurgam | Ray | ratio |")
    out.append("|---|---|---|---|---|---|")
    ratios = {}
    paired_ray = set()
    for r in res["rows"]:
        other = r.get("pairs_with") or r["id"]
        y = rows_ray.get(other)
        if not y:
            continue
        paired_ray.add(other)
        q = ratio(r, y)
        ratios[r["id"]] = q
        qs = "-" if q is None else f"{q:.1f}×"
        rid = r["id"] if other == r["id"] else f"{r['id']} (Ray: {other})"
        out.append(f"| {rid} | {r['label'].strip()} | {r['unit']} | {cell(r)} | {cell(y)} | {qs} |")

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
    out.append("\n## Ratio targets\n")
    out.append("| target | measured ratio | met |")
    out.append("|---|---|---|")
    for rid, want, text in targets:
        q = ratios.get(rid)
        out.append(f"| {text} | {'-' if q is None else f'{q:.1f}×'} | {'-' if q is None else ('yes' if q >= want else 'NO')} |")

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
