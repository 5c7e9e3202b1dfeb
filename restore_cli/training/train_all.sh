#!/usr/bin/env bash
# Train the four bundled models concurrently on one GPU and export them into one folder.
#   usage (from the repo root): restore_cli/training/train_all.sh TRAIN_DIR OUT_DIR [MINUTES=7.5] [EVAL_DIR]
#   e.g.  restore_cli/training/train_all.sh .devdata/train runs/bundled 7.5 .devdata/val
# OUT_DIR gets <preset>.safetensors (float16), train.log (combined), summary.json (sha256, iterations, scores);
# OUT_DIR/runs/ is scratch. See restore_cli/training/train_all.py.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,6p' "$0"
    exit 2
fi
train_dir=$(realpath -m "$1")
out_dir=$(realpath -m "$2")
eval_dir=""
if [ -n "${4:-}" ]; then eval_dir=$(realpath -m "$4"); fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
args=("$train_dir" "$out_dir" --minutes "${3:-7.5}")
if [ -n "$eval_dir" ]; then args+=(--eval-dir "$eval_dir"); fi
exec python -m restore_cli.training.train_all "${args[@]}"
