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
source "$(dirname "$0")/preset_launch.sh"
need_args 5 "$0" 11 "$@"
dataset=$1 patch=$2 gpus=$3 data=$4 last=$5
shift 5
preset_launch main.py "$dataset" "$patch" "$gpus" --data_dir "$data" --root_log "$last" "$@"
