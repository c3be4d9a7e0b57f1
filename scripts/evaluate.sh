#!/usr/bin/env bash
# Evaluate a checkpoint (ours or an official release file) on a paper configuration.
#
#   scripts/evaluate.sh DATASET PATCH NUM_GPUS DATA_DIR CHECKPOINT [extra main.py flags...]
#   scripts/evaluate.sh actnet 128 1 /data/activitynet ckpt/actnet_p128.pth.tar
#
# DATASET and PATCH name the preset as in train.sh (e.g. sthv1 128_8x12). Writes metrics_eval.json into
# the run folder (LOG_DIR defaults to exp; pass --root_log to change). A checkpoint trained here also
# evaluates alone: python main.py --evaluate --resume RUN/ckpt.best.pth.tar (writes into RUN).
set -euo pipefail
source "$(dirname "$0")/preset_launch.sh"
need_args 5 "$0" 9 "$@"
dataset=$1 patch=$2 gpus=$3 data=$4 last=$5
shift 5
preset_launch main.py "$dataset" "$patch" "$gpus" --data_dir "$data" --evaluate --resume "$last" "$@"
