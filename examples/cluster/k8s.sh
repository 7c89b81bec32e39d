#!/usr/bin/env bash
# TTT-NN on Kubernetes: each stage an Indexed Job (examples/cluster/k8s-job.yaml) applied when the
# one before it completed (docs/scale.md). The data lives on a ReadWriteMany volume mounted at /data
# in every pod. Edit the settings below, then:
#
#   WORKERS=8 TTTNN_IMAGE=registry/tttnn:latest examples/cluster/k8s.sh
#
# Sweep mode (TTTNN_SWEEP=/data/FILE, `tttnn sweep`): ingest, then the sweep's points split among
# the pods (who share its neighbour tables: parallelism = completions), then one pod gathers the
# runs into $TTTNN_RESULTS/results.duckdb and writes the comparison beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
workers=${WORKERS:-4}
export TTTNN_IMAGE=${TTTNN_IMAGE:-tttnn:latest}
export TTTNN_PVC=${TTTNN_PVC:-tttnn-data}
export TTTNN_STORE=${TTTNN_STORE:-/data/store}
export TTTNN_ENCODER=${TTTNN_ENCODER:-/data/encoder}
export TTTNN_MODEL=${TTTNN_MODEL:-/data/model}
export TTTNN_TASK=${TTTNN_TASK:-pile_all}
export TTTNN_NEIGHBORS=${TTTNN_NEIGHBORS:-50}
export TTTNN_TRAIN_FILES=${TTTNN_TRAIN_FILES:-/data/pile/train.jsonl.zst}
export TTTNN_TEST_FILES=${TTTNN_TEST_FILES:-/data/pile/test.jsonl.zst}
export TTTNN_NEIGHBOR_TABLE=${TTTNN_NEIGHBOR_TABLE:-/data/neighbors}
export TTTNN_NEIGHBORS_ARGS=${TTTNN_NEIGHBORS_ARGS:---device cuda}
# The neighbour stage: WORKERS shards of the documents x TTTNN_SLICES slices of the store.
export TTTNN_SLICES=${TTTNN_SLICES:-1}
export TTTNN_RESULTS=${TTTNN_RESULTS:-/data/results}
export TTTNN_RUN_ARGS=${TTTNN_RUN_ARGS:---device cuda}
export TTTNN_SWEEP=${TTTNN_SWEEP:-}
timeout=${TTTNN_STAGE_TIMEOUT:-72h}
steps=("ingest $workers 1" "compact 1 0" "neighbors $((workers * TTTNN_SLICES)) 1" "ttt $workers 1" "merge 1 0")
if [ -n "$TTTNN_SWEEP" ]; then
  steps=("ingest $workers 1" "compact 1 0" "sweep $workers 1" "sweep-merge 1 0")
fi
for step in "${steps[@]}"; do
  read -r stage completions gpus <<<"$step"
  STAGE=$stage COMPLETIONS=$completions GPUS=$gpus envsubst <"$here/k8s-job.yaml" | kubectl apply -f -
  kubectl wait --for=condition=complete "job/tttnn-$stage" --timeout="$timeout"
done
if [ -n "$TTTNN_SWEEP" ]; then
  echo "results: $TTTNN_RESULTS/comparison.csv on the volume; tttnn compare --db $TTTNN_RESULTS/results.duckdb RUN..."
else
  echo "results: kubectl exec into a pod with the volume, then: tttnn sql table1 --db $TTTNN_RESULTS/results.duckdb"
fi
