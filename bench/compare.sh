#!/usr/bin/env bash
# Runs `resurgam bench` and the same workloads on Ray (bench/ray/bench_ray.py) on this
# machine, one after the other, and writes the side-by-side table with ratios.
#
#   bench/compare.sh [--quick]
#
# Environment:
#   OUT=DIR        where results go (default bench/results/<UTC timestamp>)
#   RAY_VENV=DIR   a Python venv with ray (created with `pip install ray` if missing;
#                  default ~/.cache/resurgam-bench-ray-venv)
#   RAY_ACTORS=N   W4 actor counts for Ray (default 100)
#
# Outputs in $OUT: resurgam.json, ray.json, their stderr logs, and compare.md (printed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=()
if [[ "${1:-}" == "--quick" ]]; then
    quick=(--quick)
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--quick]" >&2
    exit 2
fi
out=${OUT:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}
venv=${RAY_VENV:-$HOME/.cache/resurgam-bench-ray-venv}
mkdir -p "$out"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import ray' 2>/dev/null; then
    echo "compare: installing ray into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet ray
fi

echo "compare: building resurgam (release)" >&2
(cd "$root" && cargo build --release --quiet --bin resurgam)

{
    echo "nproc: $(nproc)"
    lscpu | head -20
    echo "kernel: $(uname -r)"
    echo "load at start: $(cat /proc/loadavg)"
    echo "ray: $("$venv/bin/python" -c 'import ray; print(ray.__version__)')"
} > "$out/machine.txt"

echo "compare: resurgam bench ${quick[*]}" >&2
status=0
"$root/target/release/resurgam" bench --json "${quick[@]}" > "$out/resurgam.json" 2> "$out/resurgam.log" || status=$?

echo "compare: Ray ${quick[*]}" >&2
"$venv/bin/python" "$here/ray/bench_ray.py" "${quick[@]}" --actors "${RAY_ACTORS:-100}" \
    --out "$out/ray.json" > "$out/ray.log" 2>&1 || status=$?
echo "load at end: $(cat /proc/loadavg)" >> "$out/machine.txt"

python3 "$here/compare.py" "$out/resurgam.json" "$out/ray.json" > "$out/compare.md"
cat "$out/compare.md"
echo "compare: results in $out" >&2
exit "$status"
