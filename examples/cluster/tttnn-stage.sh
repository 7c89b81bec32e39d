#!/usr/bin/env bash
# One stage of a TTT-NN job on a cluster, run by every worker of a SLURM array job or a Kubernetes
# Indexed Job (docs/scale.md). The worker's index and the number of workers come from the scheduler:
#   SLURM:      SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT
#   Kubernetes: JOB_COMPLETION_INDEX, and TTTNN_WORKERS (the Job's `completions`)
# Everything else from the environment (a shared filesystem or, once tttnn has it, object storage):
#   TTTNN_BIN (default: tttnn on PATH), TTTNN_STORE, TTTNN_ENCODER, TTTNN_MODEL, TTTNN_TASK,
#   TTTNN_TRAIN_FILES and TTTNN_TEST_FILES (space-separated JSONL), TTTNN_NEIGHBORS (k),
#   TTTNN_NEIGHBOR_TABLE, TTTNN_RESULTS (a directory for the shard databases and the merged one),
#   TTTNN_RUN_ARGS (more `tttnn run` flags, e.g. "--lr 2e-5 --device cuda"), TTTNN_SLICES (M: the
#   neighbour stage splits the store's rows into M slices as well as the documents into shards, so
#   its array has WORKERS x M tasks; default 1), TTTNN_NEIGHBORS_ARGS (more `tttnn neighbors` flags,
#   e.g. "--device cuda"), TTTNN_SWEEP (a sweep file, `tttnn sweep`: its [base] names the store, the
#   encoder and the model; the sweep stages replace neighbors, ttt and merge).
#
#   tttnn-stage.sh ingest      every worker: its share of the train and test files' lines
#   tttnn-stage.sh compact     one worker: merges the workers' small files (an unsharded ingest)
#   tttnn-stage.sh neighbors   every task: its shard of the test documents against its slice of the
#                              store (exact, by matrix products), all into one table
#   tttnn-stage.sh ttt         every worker: its share of the test documents, its own database
#   tttnn-stage.sh merge       one worker: the shard databases into one run
#   tttnn-stage.sh sweep       every worker: its share of the sweep's points, its own database; the
#                              neighbour tables shared (each worker computes its share of every
#                              table and waits for the others': the workers must run at once)
#   tttnn-stage.sh sweep-merge one worker: the workers' runs into one database, and the sweep's
#                              comparison ($TTTNN_RESULTS/comparison.csv)
set -euo pipefail
stage=${1:?usage: tttnn-stage.sh ingest|compact|neighbors|ttt|merge|sweep|sweep-merge}
tttnn=${TTTNN_BIN:-tttnn}
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  index=$SLURM_ARRAY_TASK_ID
  count=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT unset: an array job sets it}
elif [ -n "${JOB_COMPLETION_INDEX:-}" ]; then
  index=$JOB_COMPLETION_INDEX
  count=${TTTNN_WORKERS:?TTTNN_WORKERS unset: set it to the number of completions of the Indexed Job}
else
  index=0
  count=1
fi
shard="$index/$count"
k=${TTTNN_NEIGHBORS:-50}
echo "tttnn-stage: $stage as worker $shard on $(hostname)" >&2
case "$stage" in
  ingest)
    # shellcheck disable=SC2086 # the file lists are space-separated on purpose
    "$tttnn" ingest -q $TTTNN_TRAIN_FILES --split train --store "$TTTNN_STORE" --encoder "$TTTNN_ENCODER" --shard "$shard" >/dev/null
    # shellcheck disable=SC2086
    "$tttnn" ingest -q $TTTNN_TEST_FILES --split test --store "$TTTNN_STORE" --encoder "$TTTNN_ENCODER" --shard "$shard" >/dev/null
    ;;
  compact)
    # Unsharded passes add nothing (every line is stored) and merge the workers' small files.
    # shellcheck disable=SC2086
    "$tttnn" ingest -q $TTTNN_TRAIN_FILES --split train --store "$TTTNN_STORE" --encoder "$TTTNN_ENCODER" >/dev/null
    # shellcheck disable=SC2086
    "$tttnn" ingest -q $TTTNN_TEST_FILES --split test --store "$TTTNN_STORE" --encoder "$TTTNN_ENCODER" >/dev/null
    ;;
  neighbors)
    # Task i of the WORKERS x M array: shard i / M of the documents, slice i mod M of the store.
    slices=${TTTNN_SLICES:-1}
    if [ $((count % slices)) -ne 0 ]; then
      echo "tttnn-stage: the neighbour stage has $count tasks, not a multiple of TTTNN_SLICES=$slices" >&2
      exit 1
    fi
    # shellcheck disable=SC2086 # TTTNN_NEIGHBORS_ARGS is a list of flags
    "$tttnn" neighbors -q --store "$TTTNN_STORE" --task "$TTTNN_TASK" -k "$k" \
      --out "$TTTNN_NEIGHBOR_TABLE" --shard "$((index / slices))/$((count / slices))" \
      --slice "$((index % slices))/$slices" ${TTTNN_NEIGHBORS_ARGS:-} >/dev/null
    ;;
  ttt)
    mkdir -p "$TTTNN_RESULTS"
    db="$TTTNN_RESULTS/shard-$index-of-$count.duckdb"
    # A rescheduled worker finds its database: it resumes the run there instead of starting over.
    run=$("$tttnn" sql "SELECT max(id) FROM runs WHERE status <> 'finished'" --db "$db" --format csv 2>/dev/null | tail -n +2 || true)
    if [ -n "$run" ]; then
      "$tttnn" run -q --resume "$run" --db "$db" >/dev/null
    elif [ -z "$("$tttnn" sql "SELECT id FROM runs" --db "$db" --format csv 2>/dev/null | tail -n +2 || true)" ]; then
      # shellcheck disable=SC2086 # TTTNN_RUN_ARGS is a list of flags
      "$tttnn" run -q --store "$TTTNN_STORE" --encoder "$TTTNN_ENCODER" --model "$TTTNN_MODEL" \
        --task "$TTTNN_TASK" -k "$k" --neighbors-from "$TTTNN_NEIGHBOR_TABLE" --shard "$shard" \
        --db "$db" ${TTTNN_RUN_ARGS:-} >/dev/null
    fi
    ;;
  merge)
    "$tttnn" merge "$TTTNN_RESULTS/results.duckdb" "$TTTNN_RESULTS"/shard-*-of-*.duckdb
    ;;
  sweep)
    mkdir -p "$TTTNN_RESULTS"
    # A rescheduled worker finds its database: finished points are skipped, unfinished resumed.
    "$tttnn" sweep -q "${TTTNN_SWEEP:?TTTNN_SWEEP unset: the sweep file}" --shard "$shard" \
      --db "$TTTNN_RESULTS/sweep-$index-of-$count.duckdb" --tables "$TTTNN_RESULTS/sweep-tables" >/dev/null
    ;;
  sweep-merge)
    "$tttnn" merge -q --runs "$TTTNN_RESULTS/results.duckdb" "$TTTNN_RESULTS"/sweep-*-of-*.duckdb
    # Every point is finished there: the sweep only compares them with its baseline.
    "$tttnn" sweep -q "${TTTNN_SWEEP:?TTTNN_SWEEP unset: the sweep file}" \
      --db "$TTTNN_RESULTS/results.duckdb" --format csv --out "$TTTNN_RESULTS/comparison.csv"
    ;;
  *)
    echo "tttnn-stage: unknown stage $stage" >&2
    exit 1
    ;;
esac
