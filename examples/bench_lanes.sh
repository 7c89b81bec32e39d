#!/usr/bin/env bash
# Lanes benchmark (issue #18): documents per hour of `tttnn run` on the demo (SmolLM2-135M, k=20,
# the demo's 12 documents and evaluation points) with 1, 2, 4 and 8 lanes, full fine-tuning and
# LoRA, each against the sequential run (1 lane) of the same benchmark run. A lane count the
# memory plan refuses is reported as refused, with the plan. Figures: docs/benchmarks.md.
#
#   TTTNN_DEMO_OUT=/tmp/demo scripts/demo        # once: the demo's store
#   examples/bench_lanes.sh /tmp/demo [LANES...] # default lanes: 1 2 4 8
set -euo pipefail
demo=${1:?usage: examples/bench_lanes.sh DEMO_DIR [LANES...]}
shift
if [ $# -gt 0 ]; then lanes=("$@"); else lanes=(1 2 4 8); fi
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source .tttnn-env
cargo build -q
tttnn="$CARGO_TARGET_DIR/debug/tttnn"
db=$(mktemp -d)/lanes.duckdb
points=1,2,5,10,20
# The demo's neighbours are at most 863 tokens, so 1,024-token chunks train exactly as the model's
# 8,192; the memory plan then budgets activations for 1,024 tokens.
common=(--store "$demo/store" --encoder "$TTTNN_DEPS/encoders/all-minilm-l6-v2"
        --model "$TTTNN_DEPS/models/smollm2-135m-instruct" --task pile_all --limit-docs 2
        --neighbors 20 --eval-at "$points" --optimizer-state reset --max-length 1024 --db "$db" --quiet)
for adapter in full lora; do
  extra=()
  [ "$adapter" = lora ] && extra=(--adapter lora --lr 1e-4)
  for l in "${lanes[@]}"; do
    if ! out=$("$tttnn" run "${common[@]}" "${extra[@]}" --lanes "$l" --name "$adapter-$l" 2>&1 >/dev/null); then
      echo "| $adapter | $l | refused: ${out##*error: } |" >&2
    fi
  done
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; results in $db" >&2
"$tttnn" sql --db "$db" "
  WITH r AS (
    SELECT name, split_part(name, '-', 1) AS adapter, lanes,
           epoch(finished_at) - epoch(started_at) AS seconds,
           (SELECT count(*) FROM docs d WHERE d.run_id = runs.id) AS docs
    FROM runs WHERE status = 'finished')
  SELECT r.adapter, r.lanes, r.docs, round(r.seconds, 1) AS seconds,
         round(3600 * r.docs / r.seconds, 1) AS docs_per_hour,
         round((3600 * r.docs / r.seconds) / (3600 * one.docs / one.seconds), 2) AS vs_1_lane
  FROM r JOIN r AS one ON one.adapter = r.adapter AND one.lanes = 1
  ORDER BY r.adapter, r.lanes"
