#!/usr/bin/env bash
# Runs `resurgam-bench` (what `resurgam bench` runs) and the same workloads on Ray
# (bench/ray/bench_ray.py) on this machine, one after the other, and writes the
# side-by-side table with ratios.
#
#   bench/compare.sh [--quick] [--only w1,w2,w3,w7]
#
# --only is passed to both sides (Ray has no W6 and W7; it runs the rest of the list).
#
# Environment:
#   OUT=DIR        where results go (default bench/results/<UTC timestamp>)
#   RAY_VENV=DIR   a Python venv with ray (created with `pip install ray` if missing;
#                  default ~/.cache/resurgam-bench-ray-venv)
#   RAY_ACTORS=N   W4 actor counts for Ray (default 100)
#   CARGO_TARGET_DIR=DIR  cargo's target directory (absolute; default target/ in the repo)
#   PREVIOUS=BINARY  an earlier `resurgam` binary: it runs the same workloads right
#                  before this one (`$PREVIOUS bench`: its own harness, built in, or
#                  resurgam-bench next to it), and the table and charts show it side by side
#
# W7 (resurgam's Python exec actor) runs on the venv's interpreter, the one Ray's actors
# run on; the SDK is the repository's python/ directory.
#
# Outputs in $OUT: resurgam.json, ray.json (and previous.json), their stderr logs,
# compare.md (printed) and the charts latency.svg, throughput.svg, recovery.svg.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
quick=()
only=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=(--quick) ;;
        --only) [[ $# -ge 2 ]] || { echo "usage: $0 [--quick] [--only LIST]" >&2; exit 2; }
                only=(--only "$2"); shift ;;
        *) echo "usage: $0 [--quick] [--only LIST]" >&2; exit 2 ;;
    esac
    shift
done
out=${OUT:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}
venv=${RAY_VENV:-$HOME/.cache/resurgam-bench-ray-venv}
mkdir -p "$out"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import ray' 2>/dev/null; then
    echo "compare: installing ray into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet ray
fi

echo "compare: building resurgam and resurgam-bench (release)" >&2
(cd "$root" && cargo build --release --quiet -p resurgam -p resurgam-bench)
release=${CARGO_TARGET_DIR:-$root/target}/release

{
    echo "nproc: $(nproc)"
    lscpu | head -20
    echo "kernel: $(uname -r)"
    echo "load at start: $(cat /proc/loadavg)"
    echo "ray: $("$venv/bin/python" -c 'import ray; print(ray.__version__)')"
} > "$out/machine.txt"

status=0
prev_json=()
if [[ -n "${PREVIOUS:-}" ]]; then
    echo "compare: previous binary $PREVIOUS bench ${quick[*]} ${only[*]}" >&2
    "$PREVIOUS" bench --json "${quick[@]}" "${only[@]}" \
        --python "$venv/bin/python" --python-sdk "$root/python" \
        > "$out/previous.json" 2> "$out/previous.log" || status=$?
    prev_json=("$out/previous.json")
fi

echo "compare: resurgam bench ${quick[*]} ${only[*]}" >&2
"$release/resurgam-bench" --binary "$release/resurgam" --json "${quick[@]}" "${only[@]}" \
    --python "$venv/bin/python" --python-sdk "$root/python" \
    > "$out/resurgam.json" 2> "$out/resurgam.log" || status=$?

echo "compare: Ray ${quick[*]} ${only[*]}" >&2
"$venv/bin/python" "$here/ray/bench_ray.py" "${quick[@]}" "${only[@]}" --actors "${RAY_ACTORS:-100}" \
    --out "$out/ray.json" > "$out/ray.log" 2>&1 || status=$?
echo "load at end: $(cat /proc/loadavg)" >> "$out/machine.txt"

python3 "$here/compare.py" "$out/resurgam.json" "$out/ray.json" "${prev_json[@]}" > "$out/compare.md"
python3 "$here/charts.py" "$out" "$out/resurgam.json" "$out/ray.json" "${prev_json[@]}"
cat "$out/compare.md"
echo "compare: results in $out" >&2
exit "$status"
