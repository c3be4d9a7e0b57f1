# Shared by train.sh, evaluate.sh and early_exit.sh (sourced, not run).
#
# need_args COUNT SCRIPT USAGE_LINES ARGS...: print the script's usage comment and exit 2 when fewer
# than COUNT arguments were given.
need_args() {
  local count=$1 script=$2 lines=$3
  shift 3
  if [ $# -lt "$count" ]; then
    sed -n "2,${lines}p" "$script" >&2
    exit 2
  fi
}

# preset_launch PROGRAM DATASET PATCH NUM_GPUS [PROGRAM FLAGS...]: torchrun PROGRAM on one node with
# configs/DATASET_pPATCH.yaml, from the repository root.
preset_launch() {
  local program=$1 dataset=$2 patch=$3 gpus=$4
  shift 4
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local config=configs/${dataset}_p${patch}.yaml
  if [ ! -f "$config" ]; then
    echo "no preset $config (presets: $(cd configs && ls *_p*.yaml | sed 's/\.yaml$//' | paste -sd ' '))" >&2
    exit 2
  fi
  exec torchrun --standalone --nproc_per_node="$gpus" "$program" --config "$config" "$@"
}
