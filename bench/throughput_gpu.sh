#!/usr/bin/env bash
# Issue 13 on the device GPU in one call (about 8 minutes on an H100): the `cuda` tests of the fast path, then the
# throughput benchmark of the listed models.
#   usage (repo root): bench/throughput_gpu.sh OUT_DIR [tests] [bench]   (default: both)
# Writes OUT_DIR/throughput_tests.{log,xml} (the xml holds each model's eager half-vs-fp32 error),
# OUT_DIR/throughput.log, OUT_DIR/throughput.{json,md} (rewritten after every model, so a timeout keeps the rest)
# (copy the last two to bench/results/ to commit them).
set -u
out=${1:?usage: bench/throughput_gpu.sh OUT_DIR [tests] [bench]}
shift
steps=" ${*:-tests bench} "
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 RESTORE_CACHE_DIR=${RESTORE_CACHE_DIR:-/tmp/restore-cache}
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv > "$out/throughput.log" 2>&1
if [[ "$steps" == *" tests "* ]]; then
    timeout 190 python3 -m pytest -q -m cuda tests/test_throughput_cuda.py -p no:cacheprovider -o addopts="" -rfE \
        --durations 10 --junitxml="$out/throughput_tests.xml" > "$out/throughput_tests.log" 2>&1
    echo "tests exit $?" >> "$out/throughput_tests.log"
fi
if [[ "$steps" == *" bench "* ]]; then
    timeout 370 python3 -m bench.throughput --all --out "$out" >> "$out/throughput.log" 2>&1
    echo "bench exit $?" >> "$out/throughput.log"
fi
tail -4 "$out/throughput_tests.log" 2>/dev/null; grep -E "speed-up|exit" "$out/throughput.log" "$out/throughput.md" 2>/dev/null | tail -4
