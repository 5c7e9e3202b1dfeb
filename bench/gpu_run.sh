#!/usr/bin/env bash
# Everything this project runs on the H200 in one go: build the kernels, run the `cuda` tests, run the benchmarks.
#   usage (repo root, golden vectors in $RESTORE_SHARED/golden): bench/gpu_run.sh OUT_DIR [STEP...]
#   steps: build tests engine archs ops upstream (default: all), and mamba: build mamba-ssm's selective-scan
#   forward from build/mamba_ssm/ (bench/mamba_ssm_build.py) for the three-backend test and benchmark rows.
#   TESTS=<pytest args> narrows the test step.
# Results: OUT_DIR/{build.log,cuda_tests.log,engine.json,archs.json,ops.json,bi_wkv_upstream.txt}; the .md tables
# in bench/results/ are regenerated from the JSON (bench/common.py).
set -u
out=${1:?usage: bench/gpu_run.sh OUT_DIR}
shift
steps=" ${*:-build tests engine archs ops upstream} "
want() { [[ "$steps" == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RESTORE_SHARED=${RESTORE_SHARED:-.devdata}
export RESTORE_CACHE_DIR=${RESTORE_CACHE_DIR:-/tmp/restore-cache}
ops="selective_scan bi_wkv neighborhood_attn upfirdn2d"
mamba_build=/tmp/mamba-build
export PYTHONPATH=.:$mamba_build
mamba_src=$(ls -d build/mamba_ssm/mamba_ssm-*/ 2>/dev/null | head -1)
if want mamba && [ -n "$mamba_src" ]; then
    (timeout 480 python3 bench/mamba_ssm_build.py --src "$mamba_src" --out $mamba_build > "$out/mamba_build.log" 2>&1;
     touch /tmp/mamba-done) &
fi
# 1. kernels, built in parallel into the cache the tests and benchmarks then load from
pids=""
want build && for op in $ops; do
    (timeout 400 python3 -c "
import time, archs.ops.$op
from archs.ops import _build
t = time.time(); m = _build.load('$op', verbose=True)
print('BUILD $op', 'ok' if m else 'FAILED', f'{time.time() - t:.0f}s', _build._ERRORS.get('$op', ''))
" > "/tmp/build_$op.log" 2>&1) &
    pids="$pids $!"
done
[ -n "$pids" ] && wait $pids  # not the mamba-ssm build, which goes on in the background
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
if want mamba && [ -n "$mamba_src" ]; then  # the mamba-ssm rows and the three-backend test need its build
    for _ in $(seq 240); do [ -e /tmp/mamba-done ] && break; sleep 2; done
    tail -5 "$out/mamba_build.log"
    timeout 120 python3 -m pytest -q -m cuda tests/test_ops_selective_scan.py -k "three_backends" -p no:cacheprovider \
        -o addopts="" -rfE --timeout 60 > "$out/mamba_tests.log" 2>&1
fi
want ops && timeout 120 python3 bench/ops.py --out "$out" > /dev/null 2>&1
up=""; [ -d build/upstream_bi_wkv ] && up="--upstream-dir build/upstream_bi_wkv"
if want upstream; then
    timeout 120 python3 bench/bi_wkv_upstream_check.py $up > "$out/bi_wkv_upstream.txt" 2>&1
    timeout 120 python3 bench/bi_wkv_upstream_check.py $up --strong >> "$out/bi_wkv_upstream.txt" 2>&1
fi
rm -f "$out"/*.md
tail -3 "$out/cuda_tests.log" 2>/dev/null; head -20 "$out/build.log" 2>/dev/null; true
