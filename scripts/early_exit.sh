#!/usr/bin/env bash
# Early-exit budget sweep (and optional deployable thresholds) for a checkpoint.
#
#   scripts/early_exit.sh DATASET PATCH NUM_GPUS DATA_DIR CHECKPOINT [extra test_early_exit.py flags...]
#   scripts/early_exit.sh actnet 128 4 /data/activitynet ckpt/actnet_p128.pth.tar --criterion entropy confidence --budget 18.1
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
dataset=$1 patch=$2 gpus=$3 data=$4 ckpt=$5
shift 5
cd "$(dirname "$0")/.."
config=configs/${dataset}_p${patch}.yaml
[ -f "$config" ] || { echo "no preset $config (datasets: actnet fcvid minik; patches: 96 128 160)" >&2; exit 2; }
exec torchrun --standalone --nproc_per_node="$gpus" test_early_exit.py --config "$config" --data_dir "$data" \
  --evaluate --resume "$ckpt" "$@"
