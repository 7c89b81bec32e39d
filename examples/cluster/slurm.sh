#!/usr/bin/env bash
# TTT-NN on a SLURM cluster: ingest on N GPUs, the neighbour table, TTT on N GPUs, merge; each stage
# an array job that starts when the one before it succeeded (docs/scale.md). Paths must be on a
# filesystem every node sees. Edit the settings below, then run this script on the login node:
#
#   WORKERS=8 examples/cluster/slurm.sh
#
# Sweep mode (TTTNN_SWEEP=FILE, `tttnn sweep`): ingest, then the sweep's points split among the
# workers (who share its neighbour tables, so the array's tasks must run at once), then one job
# gathers the runs into $TTTNN_RESULTS/results.duckdb and writes the comparison beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
workers=${WORKERS:-4}
export TTTNN_BIN=${TTTNN_BIN:-tttnn}
export TTTNN_STORE=${TTTNN_STORE:-$PWD/runs/store}
export TTTNN_ENCODER=${TTTNN_ENCODER:?the encoder directory}
export TTTNN_MODEL=${TTTNN_MODEL:?the model directory}
export TTTNN_TASK=${TTTNN_TASK:-pile_all}
export TTTNN_NEIGHBORS=${TTTNN_NEIGHBORS:-50}
export TTTNN_TRAIN_FILES=${TTTNN_TRAIN_FILES:?the train JSONL files, space-separated}
export TTTNN_TEST_FILES=${TTTNN_TEST_FILES:?the test JSONL files, space-separated}
export TTTNN_NEIGHBOR_TABLE=${TTTNN_NEIGHBOR_TABLE:-$PWD/runs/neighbors}
export TTTNN_RESULTS=${TTTNN_RESULTS:-$PWD/runs/results}
export TTTNN_RUN_ARGS=${TTTNN_RUN_ARGS:---device cuda}
export TTTNN_NEIGHBORS_ARGS=${TTTNN_NEIGHBORS_ARGS:---device cuda}
# The neighbour stage: WORKERS shards of the documents x TTTNN_SLICES slices of the store.
export TTTNN_SLICES=${TTTNN_SLICES:-1}
gpu=${SLURM_GPU_FLAGS:---gres=gpu:1}
# sbatch --parsable prints the job id; each stage waits for the previous one's success.
submit() {
  local dependency=$1 array=$2 stage=$3
  # shellcheck disable=SC2086 # $gpu holds flags
  sbatch --parsable --export=ALL --job-name "tttnn-$stage" ${dependency:+--dependency=afterok:$dependency} \
    ${array:+--array=$array} $gpu --wrap "$here/tttnn-stage.sh $stage"
}
ingest=$(submit "" "0-$((workers - 1))" ingest)
compact=$(submit "$ingest" "" compact)
if [ -n "${TTTNN_SWEEP:-}" ]; then
  export TTTNN_SWEEP
  sweep=$(submit "$compact" "0-$((workers - 1))" sweep)
  merge=$(submit "$sweep" "" sweep-merge)
  echo "submitted: ingest $ingest, compact $compact, sweep $sweep, merge $merge"
  echo "results: $TTTNN_RESULTS/comparison.csv; $TTTNN_BIN compare --db $TTTNN_RESULTS/results.duckdb RUN..."
  exit 0
fi
neighbors=$(submit "$compact" "0-$((workers * TTTNN_SLICES - 1))" neighbors)
ttt=$(submit "$neighbors" "0-$((workers - 1))" ttt)
merge=$(submit "$ttt" "" merge)
echo "submitted: ingest $ingest, compact $compact, neighbors $neighbors, ttt $ttt, merge $merge"
echo "results: $TTTNN_BIN sql table1 --db $TTTNN_RESULTS/results.duckdb"
