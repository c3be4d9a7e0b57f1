#!/usr/bin/env bash
# Train a paper configuration with torchrun on one node.
#
#   scripts/train.sh DATASET PATCH NUM_GPUS DATA_DIR LOG_DIR [extra main.py flags...]
#   scripts/train.sh actnet 128 4 /data/activitynet exp
#
# DATASET is actnet, fcvid or minik and PATCH 96, 128 or 160 (configs/DATASET_pPATCH.yaml, which
# reproduces the official README command). --batch_size in the preset is the global batch, so any
# number of GPUs trains with the official effective batch. Several nodes: call torchrun yourself
# with --nnodes/--node_rank/--master_addr (see the README).
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
dataset=$1 patch=$2 gpus=$3 data=$4 log=$5
shift 5
cd "$(dirname "$0")/.."
config=configs/${dataset}_p${patch}.yaml
[ -f "$config" ] || { echo "no preset $config (datasets: actnet fcvid minik; patches: 96 128 160)" >&2; exit 2; }
exec torchrun --standalone --nproc_per_node="$gpus" main.py --config "$config" --data_dir "$data" --root_log "$log" "$@"
