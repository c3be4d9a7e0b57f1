#!/usr/bin/env bash
# Early-exit budget sweep (and optional deployable thresholds) for a checkpoint.
#
#   scripts/early_exit.sh DATASET PATCH NUM_GPUS DATA_DIR CHECKPOINT [extra test_early_exit.py flags...]
#   scripts/early_exit.sh actnet 128 4 /data/activitynet ckpt/actnet_p128.pth.tar --criterion entropy confidence --budget 18.1
# DATASET and PATCH name the preset as in train.sh (e.g. sthv1 128_8x12).
set -euo pipefail
source "$(dirname "$0")/preset_launch.sh"
need_args 5 "$0" 6 "$@"
dataset=$1 patch=$2 gpus=$3 data=$4 last=$5
shift 5
preset_launch test_early_exit.py "$dataset" "$patch" "$gpus" --data_dir "$data" --evaluate --resume "$last" "$@"
