#!/usr/bin/env bash
# Train a paper configuration with torchrun on one node.
#
#   scripts/train.sh DATASET PATCH NUM_GPUS DATA_DIR LOG_DIR [extra main.py flags...]
#   scripts/train.sh actnet 128 4 /data/activitynet exp
#
# configs/DATASET_pPATCH.yaml reproduces the official README command: DATASET actnet, fcvid or minik
# with PATCH 96, 128 or 160; sthv1, sthv2 or jester with e.g. PATCH 128_8x12 (tsm); k400 with
# 128_16x32 (x3d). --batch_size in the preset is the global batch, so any number of GPUs trains with
# the official effective batch. Several nodes: call torchrun yourself with
# --nnodes/--node_rank/--master_addr (see docs/uni-adafocus.md). An official command line as it is:
# python -m ops.official_commands "LINE" prints ours (docs/official-commands.md).
set -euo pipefail
source "$(dirname "$0")/preset_launch.sh"
need_args 5 "$0" 13 "$@"
dataset=$1 patch=$2 gpus=$3 data=$4 last=$5
shift 5
preset_launch main.py "$dataset" "$patch" "$gpus" --data_dir "$data" --root_log "$last" "$@"
