#!/usr/bin/env python3
"""SVG charts of one `bench/compare.sh` run: resurgam, the previous binary and Ray, side
by side, on a log scale (the gaps span three orders of magnitude).

Usage: charts.py OUT_DIR RESURGAM_JSON RAY_JSON [PREVIOUS_JSON]

Writes OUT_DIR/latency.svg (sync call p50 and p99), OUT_DIR/throughput.svg (pipelined
calls/s) and OUT_DIR/recovery.svg (kill -9 -> serving again). Each bar is a median; the
thin line across it spans the min-max over repeats. Standard library only.
"""

import json
import math
import sys
from html import escape
from typing import Optional

COLORS = {"resurgam": "#1b7f3b", "previous": "#8fbf9f", "Ray": "#c0392b"}

# (resurgam row, Ray row, label) per chart.
CHARTS = {
    "latency": (
        "Sync call latency (µs, lower is better)",
        [
            ("w1.sync.p50_us", "w1.sync.p50_us", "Rust actor, p50"),
            ("w1.sync.p99_us", "w1.sync.p99_us", "Rust actor, p99"),
            ("w7.sync.p50_us", "w1.sync.p50_us", "Python actor, p50"),
            ("w7.sync.p99_us", "w1.sync.p99_us", "Python actor, p99"),
        ],
    ),
    "throughput": (
        "Pipelined calls/s (higher is better)",
        [
            ("w2.pipe_1x1.calls_per_s", "w2.pipe_1x1.calls_per_s", "Rust, 1 actor × 1 client"),
            ("w2.pipe_8x8.calls_per_s", "w2.pipe_8x8.calls_per_s", "Rust, 8 actors × 8 clients"),
            ("w7.pipe_1x1.calls_per_s", "w2.pipe_1x1.calls_per_s", "Python, 1 actor × 1 client"),
        ],
    ),
    "recovery": (
        "kill -9 → serving again (ms, lower is better)",
        [
            ("w3.recovery.1KiB.0.total_ms", "w3.recovery.1KiB.0.total_ms", "Rust, 1 KiB"),
            ("w3.recovery.1MiB.0.total_ms", "w3.recovery.1MiB.0.total_ms", "Rust, 1 MiB"),
            ("w3.recovery.64MiB.0.total_ms", "w3.recovery.64MiB.0.total_ms", "Rust, 64 MiB"),
            ("w7.recovery.program.1MiB.0.total_ms", "w3.recovery.1MiB.0.total_ms", "Python, 1 MiB"),
        ],
    ),
}


def load(path: str) -> dict:
    """Reads a bench JSON document (Ray may print lines before it)."""
    text = open(path, encoding="utf-8").read()
    start = text.find("{\n")
    return json.loads(text[start if start >= 0 else 0:])


def rows(doc: Optional[dict]) -> dict:
    """The document's rows by id."""
    return {r["id"]: r for r in doc["rows"]} if doc else {}


def fmt(x: float) -> str:
    """A short number: 3 significant digits, thousands as k, millions as M."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def chart(title: str, groups: list, series: list) -> str:
    """One horizontal grouped bar chart: per group, one bar per (name, row) in series."""
    bar, gap, left, width = 16, 14, 190, 460
    values = [r[k] for _, g in groups for _, r in g if r for k in ("min", "max", "median") if r[k] > 0]
    if not values:
        return ""
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    span = math.log10(hi) - math.log10(lo)

    def x(v: float) -> float:
        return left + width * (math.log10(max(v, lo)) - math.log10(lo)) / span

    height = 40 + sum(len(series) * bar + gap for _ in groups) + 50
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    decade = lo
    while decade <= hi:
        out.append(f'<line x1="{x(decade):.1f}" y1="30" x2="{x(decade):.1f}" y2="{height - 40}" stroke="#ddd"/>')
        out.append(f'<text x="{x(decade):.1f}" y="{height - 26}" text-anchor="middle" fill="#555">{fmt(decade)}</text>')
        decade *= 10
    y = 36
    for label, g in groups:
        out.append(f'<text x="{left - 8}" y="{y + len(series) * bar / 2 + 4:.0f}" text-anchor="end">{escape(label)}</text>')
        for name, r in g:
            if r and r["median"] > 0:
                out.append(f'<rect x="{left}" y="{y + 2}" width="{x(r["median"]) - left:.1f}" height="{bar - 4}" fill="{COLORS[name]}"/>')
                mid = y + bar / 2
                out.append(f'<line x1="{x(r["min"]):.1f}" y1="{mid}" x2="{x(r["max"]):.1f}" y2="{mid}" stroke="#222"/>')
                out.append(f'<text x="{x(r["max"]) + 4:.1f}" y="{y + bar - 4}" fill="#222">{fmt(r["median"])}</text>')
            y += bar
        y += gap
    lx = left
    for name, _ in groups[0][1]:
        out.append(f'<rect x="{lx}" y="{height - 16}" width="12" height="12" fill="{COLORS[name]}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 6}">{name}</text>')
        lx += 100
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    """Writes the three charts; returns the exit status."""
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    res, ray = rows(load(sys.argv[2])), rows(load(sys.argv[3]))
    prev = rows(load(sys.argv[4])) if len(sys.argv) == 5 else None
    for name, (title, spec) in CHARTS.items():
        groups = []
        for res_id, ray_id, label in spec:
            if res_id not in res:
                continue
            g = [("resurgam", res.get(res_id))]
            if prev is not None:
                g.append(("previous", prev.get(res_id)))
            g.append(("Ray", ray.get(ray_id)))
            groups.append((label, g))
        if groups:
            svg = chart(title, groups, groups[0][1])
            if svg:
                with open(f"{out_dir}/{name}.svg", "w", encoding="utf-8") as f:
                    f.write(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
