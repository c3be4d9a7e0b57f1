#!/usr/bin/env bash
# Evaluate a checkpoint (ours or an official release file) on a paper configuration.
#
#   scripts/evaluate.sh DATASET PATCH NUM_GPUS DATA_DIR CHECKPOINT [extra main.py flags...]
#   scripts/evaluate.sh actnet 128 1 /data/activitynet ckpt/actnet_p128.pth.tar
#
# Writes metrics_eval.json into the run folder (LOG_DIR defaults to exp; pass --root_log to change).
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
dataset=$1 patch=$2 gpus=$3 data=$4 ckpt=$5
shift 5
cd "$(dirname "$0")/.."
config=configs/${dataset}_p${patch}.yaml
[ -f "$config" ] || { echo "no preset $config (datasets: actnet fcvid minik; patches: 96 128 160)" >&2; exit 2; }
exec torchrun --standalone --nproc_per_node="$gpus" main.py --config "$config" --data_dir "$data" \
  --evaluate --resume "$ckpt" "$@"
