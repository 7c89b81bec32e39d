#!/usr/bin/env bash
# The one engine (issue #28) against the two loops it replaced, on the demo (SmolLM2-135M, k=20,
# evaluated at 1,2,5,10,20 neighbours, `--optimizer-state reset`, 1,024-token chunks), all in one
# benchmark run on this machine:
#   - documents per hour of one document at a time: BEFORE's sequential loop, then the engine's
#     single backend;
#   - lanes 1, 2, 4 with the padding fraction, lanes filled in plan order (`--lane-order plan`,
#     what the old lanes loop did) and by length (`--lane-order length`);
#   - peak RSS of an in-context run (no training): BEFORE (a trainer built anyway) and the engine
#     (no trainer).
# Figures: docs/benchmarks.md; raw figures as JSON in docs/bench/engine-DATE.json (JSON=FILE).
#
#   TTTNN_DEMO_OUT=/tmp/demo scripts/demo     # once, for its store (BASELINES=0 is enough)
#   git worktree add /tmp/before 76a9099 && (cd /tmp/before && source /work/main/.tttnn-env &&
#     cargo build --bin tttnn && cp "$CARGO_TARGET_DIR/debug/tttnn" /tmp/tttnn-before)
#   BEFORE=/tmp/tttnn-before examples/bench_engine.sh /tmp/demo [DOCS]   # DOCS per set, default 1
set -euo pipefail
demo=${1:?usage: BEFORE=OLD_TTTNN examples/bench_engine.sh DEMO_DIR [DOCS]}
docs=${2:-1}
before=${BEFORE:?BEFORE=a tttnn binary built before the engine (see the header)}
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source .tttnn-env
cargo build -q --bin tttnn
after="$CARGO_TARGET_DIR/debug/tttnn"
json=${JSON:-docs/bench/engine-$(date +%F).json}
work=$(mktemp -d)
# MODEL, ENCODER, K and MAX_LENGTH override the demo's (e.g. the tiny fixtures, to try the script).
model=${MODEL:-$TTTNN_DEPS/models/smollm2-135m-instruct}
encoder=${ENCODER:-$TTTNN_DEPS/encoders/all-minilm-l6-v2}
k=${K:-20}
common=(--store "$demo/store" --encoder "$encoder" --model "$model" --task pile_all
        --limit-docs "$docs" --neighbors "$k" --quiet)
points=$(for p in 1 2 5 10 20; do [ "$p" -lt "$k" ] && printf '%s,' "$p"; done; echo "$k")
train=(--eval-at "$points" --optimizer-state reset --max-length "${MAX_LENGTH:-1024}")
say() { echo "bench-engine: [$(date +%T)] $*" >&2; }

# Runs BIN with ARGS into DB; prints the wall seconds.
timed() {
  local bin=$1 db=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" run "${common[@]}" --db "$db" "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
# The documents and the padding fraction of the newest run of DB (BEFORE recorded no tokens).
figures() {
  if [ "$2" = before ]; then
    echo "$("$before" sql --db "$1" --format csv "SELECT count(*) FROM docs" | tail -n 1),"
    return
  fi
  "$after" sql --db "$1" --format csv "
    SELECT count(*) AS docs,
           1 - sum(train_tokens) / nullif(sum(computed_tokens), 0) AS padding_fraction
    FROM docs WHERE run_id = (SELECT max(id) FROM runs)" | tail -n 1
}
rows=()
row() { # name binary lanes order seconds db
  local f n pad
  f=$(figures "$6" "$2")
  n=${f%%,*}
  pad=${f#*,}
  rows+=("{\"setting\": \"$1\", \"binary\": \"$2\", \"lanes\": $3, \"lane_order\": \"$4\", \"docs\": $n, \"seconds\": $5, \"docs_per_hour\": $(echo "3600 * $n / $5" | bc -l | xargs printf '%.1f'), \"padding_fraction\": ${pad:-null}}")
  printf '| %s | %s | %s | %s | %s | %.1f | %s |\n' "$1" "$2" "$3" "$4" "$n" "$5" "${pad:-–}" >&2
}

say "one document at a time: before, then the engine's single backend"
s=$(timed "$before" "$work/before.duckdb" "${train[@]}")
row single before 1 plan "$s" "$work/before.duckdb"
s=$(timed "$after" "$work/single.duckdb" "${train[@]}")
row single engine 1 plan "$s" "$work/single.duckdb"
for l in 2 4; do
  for order in plan length; do
    say "lanes $l, $order order"
    s=$(timed "$after" "$work/lanes-$l-$order.duckdb" "${train[@]}" --lanes "$l" --lane-order "$order")
    row lanes engine "$l" "$order" "$s" "$work/lanes-$l-$order.duckdb"
  done
done

say "in-context peak RSS: before, then the engine (no trainer)"
rss=()
for which in before after; do
  bin=$before
  [ "$which" = after ] && bin=$after
  /usr/bin/time -f '%M %e' -o "$work/time-$which" "$bin" run "${common[@]}" --db "$work/ic-$which.duckdb" \
    --method in-context --distance-threshold 2.3 --eval-at "$k" >/dev/null
  read -r kb secs <"$work/time-$which"
  rss+=("{\"binary\": \"$which\", \"peak_rss_mb\": $((kb / 1024)), \"seconds\": $secs}")
  echo "| in-context | $which | peak RSS $((kb / 1024)) MB | $secs s |" >&2
done

machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
mkdir -p "$(dirname "$json")"
(IFS=,; echo "{\"benchmark\": \"engine\", \"date\": \"$(date +%F)\", \"machine\": \"$machine\", \"model\": \"$(basename "$model")\", \"neighbors\": $k, \"docs_per_set\": $docs, \"before\": \"$("$before" --version)\", \"runs\": [${rows[*]}], \"in_context_rss\": [${rss[*]}]}") | python3 -m json.tool > "$json"
say "machine: $machine; figures in $json; databases in $work"
