#!/usr/bin/env bash
# Everything this project runs on the H200 in one go: build the kernels, run the `cuda` tests, run the benchmarks.
#   usage (repo root, golden vectors in $RESTORE_SHARED/golden): bench/gpu_run.sh OUT_DIR [STEP...]
#   steps: build tests engine archs ops upstream (default: all); TESTS=<pytest args> narrows the test step.
# Results: OUT_DIR/{build.log,cuda_tests.log,engine.json,archs.json,ops.json,bi_wkv_upstream.txt}; the .md tables
# in bench/results/ are regenerated from the JSON (bench/common.py).
set -u
out=${1:?usage: bench/gpu_run.sh OUT_DIR}
shift
steps=" ${*:-build tests engine archs ops upstream} "
want() { [[ "$steps" == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=. RESTORE_SHARED=${RESTORE_SHARED:-.devdata}
export RESTORE_CACHE_DIR=${RESTORE_CACHE_DIR:-/tmp/restore-cache}
ops="selective_scan bi_wkv neighborhood_attn upfirdn2d"
# 1. kernels, built in parallel into the cache the tests and benchmarks then load from
want build && for op in $ops; do
    (timeout 400 python3 -c "
import time, archs.ops.$op
from archs.ops import _build
t = time.time(); m = _build.load('$op', verbose=True)
print('BUILD $op', 'ok' if m else 'FAILED', f'{time.time() - t:.0f}s', _build._ERRORS.get('$op', ''))
" > "/tmp/build_$op.log" 2>&1) &
done
wait
if want build; then
    for op in $ops; do grep -E "BUILD|error|Error" "/tmp/build_$op.log" | tail -15; done > "$out/build.log"
    python3 -m restore_cli doctor >> "$out/build.log" 2>&1
fi
# 2. every test marked cuda (modules needing packages missing here are reported, the rest still run)
want tests && timeout 280 python3 -m pytest -q -m cuda ${TESTS:-tests} -p no:cacheprovider \
    --continue-on-collection-errors --timeout 60 --durations 15 -o addopts="" -rfE > "$out/cuda_tests.log" 2>&1
# 3. benchmarks
want engine && timeout 150 python3 bench/engine.py --out "$out" > /dev/null 2>&1
want archs && timeout 200 python3 bench/archs.py --out "$out" --golden "$RESTORE_SHARED/golden" > /dev/null 2>&1
want ops && timeout 120 python3 bench/ops.py --out "$out" > /dev/null 2>&1
up=""; [ -d build/upstream_bi_wkv ] && up="--upstream-dir build/upstream_bi_wkv"
want upstream && timeout 120 python3 bench/bi_wkv_upstream_check.py $up > "$out/bi_wkv_upstream.txt" 2>&1
rm -f "$out"/*.md
tail -3 "$out/cuda_tests.log" 2>/dev/null; head -20 "$out/build.log" 2>/dev/null; true
