#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: criterion benches (codec, pipeline) and kpl bench runs against the
# embedded simulator with shard limits, and P3 (CPU per record against PyPI aiokpl, both on one
# kinesalite: scripts/p3.py), all in one run on this machine.
# KPL_BENCH_SECONDS (default 20) sets the length of each kpl bench run; P2_SECONDS (default 60)
# that of the three P2 runs.
# P3_RECORDS (default 40000) sets how many records aiokpl puts (~200 CPU s per million).
# P1_BASE=REV also runs the pipeline bench of commit REV, alternating with this tree's
# (base, this, base, this), for a side-by-side P1 table.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${KPL_BENCH_SECONDS:-20}
out=target/bench-results
mkdir -p "$out"
cargo build --release --quiet
cargo build --release --quiet --example sdk_call_cost
# A copy: building P1_BASE's bench in the same target dir may replace target/release/kpl.
cp target/release/kpl "$out/kpl-this"
cargo bench --bench codec 2>&1 | tee "$out/codec.txt" >/dev/null
cargo bench --bench pipeline 2>&1 | tee "$out/pipeline.txt" >/dev/null
if [ -n "${P1_BASE:-}" ]; then
  # The base commit's bench, built in a worktree (sharing this target dir's dependencies).
  base_tree=target/p1-base
  git worktree remove --force "$base_tree" 2>/dev/null || true
  git worktree add --detach "$base_tree" "$P1_BASE" >/dev/null
  exe() { cargo bench --bench pipeline --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "pipeline":
        print(m["executable"])'; }
  cp "$(cd "$base_tree" && CARGO_TARGET_DIR="$PWD/../../target" exe)" "$out/pipeline-base"
  cp "$(exe)" "$out/pipeline-this"
  # The base's kpl too, for the shared-shard runs below (this tree's is rebuilt after).
  (cd "$base_tree" && CARGO_TARGET_DIR="$PWD/../../target" cargo build --release --quiet --bin kpl)
  cp target/release/kpl "$out/kpl-base"
  cargo build --release --quiet
  git worktree remove --force "$base_tree"
  rows='aggregated$|batches_of_1000$'
  : > "$out/pipeline-side-by-side.txt"
  for which in base this base this base this; do
    echo "== $which $(git rev-parse --short "$([ $which = base ] && echo "$P1_BASE" || echo HEAD)")" >> "$out/pipeline-side-by-side.txt"
    "$out/pipeline-$which" --bench "$rows" 2>&1 | grep -E '^pipeline|thrpt' >> "$out/pipeline-side-by-side.txt"
  done
fi
cargo bench --features bench-internals --bench stages 2>&1 | tee "$out/stages.txt" >/dev/null
kpl=$out/kpl-this
run() { name=$1; shift; "$kpl" bench --quiet --duration "${secs}s" --report "$out/$name.json" "$@" 2>"$out/$name.txt"; }
# P2 asks for 60 s runs (P2_SECONDS).
p2() { secs=${P2_SECONDS:-60} run "$@"; }
p2 p2-1 --shards 1 --keys 100000 --max-outstanding-records 5000
p2 p2-8 --shards 8 --keys 100000 --max-outstanding-records 40000
p2 p2-64 --shards 64 --keys 100000 --max-outstanding-records 320000
# The same 64 shards with less CPU in the way: the load handed over in batches of 64, and
# 1 000-byte records (a tenth of the records for the same bytes).
p2 p2-64-batch --shards 64 --keys 100000 --max-outstanding-records 320000 --send-batch 64
p2 p2-64-1k --shards 64 --keys 100000 --record-size 1000 --max-outstanding-records 64000
# Side by side: the KPL's aggregate size against kpl's default, same build, same run.
p2 p2-8-kpl-size --shards 8 --keys 100000 --max-outstanding-records 40000 --aggregation-max-size 51200
p2 p2-64-batch-kpl-size --shards 64 --keys 100000 --max-outstanding-records 320000 --send-batch 64 --aggregation-max-size 51200
run p4-zstd --shards 4 --payload json-logs --record-size 200-300 --compression zstd
run p4-plain --shards 4 --payload json-logs --record-size 200-300
run p5-half --shards 4 --rate 20000 --record-size 100
run p5-overload --shards 2 --record-size 1000 --max-outstanding-bytes 33554432
# Issue 6: strict ordering's cost, dedup ids' overhead, a dictionary's gain on small records.
run p6-default --shards 4 --record-size 100
run p6-strict --shards 4 --record-size 100 --strict-ordering
run p6-dedup --shards 4 --record-size 100 --dedup-ids
# Strict ordering moves one aggregate per shard per round trip: the same pair against a kpl sim
# that answers after 100 ms (a far region, or a loaded service), in its own process.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$kpl" sim --port "$port" --latency-ms 100 --stream rtt:4 --stream rtt-strict:4 >/dev/null 2>"$out/rtt-sim.txt" &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
# Ready once it has made both streams.
for _ in $(seq 200); do grep -q "stream rtt-strict" "$out/rtt-sim.txt" 2>/dev/null && break; sleep 0.1; done
run p6-rtt-default --endpoint-url "http://127.0.0.1:$port" --stream rtt --record-size 100
run p6-rtt-strict --endpoint-url "http://127.0.0.1:$port" --stream rtt-strict --record-size 100 --strict-ordering
kill $sim_pid 2>/dev/null || true
# Four producers on one limited shard (each its own process, offering ~30 % of the shard: 2 800
# records/s of 100 B), alternating this build with P1_BASE's if given.
shared4() { # NAME KPL
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$kpl" sim --port "$port" --stream shared:1 >/dev/null 2>"$out/$1-sim.txt" &
  sim_pid=$!
  for _ in $(seq 200); do grep -q "stream shared" "$out/$1-sim.txt" 2>/dev/null && break; sleep 0.1; done
  pids=()
  for i in 1 2 3 4; do
    "$2" --threads 1 bench --quiet --endpoint-url "http://127.0.0.1:$port" --stream shared --rate 2800 \
      --record-size 100 --keys 1000 --duration 20s --report "$out/$1-$i.json" 2>"$out/$1-$i.txt" &
    pids+=($!)
  done
  wait "${pids[@]}"
  kill $sim_pid 2>/dev/null || true
}
rm -f "$out"/shared4-*
for round in 1 2; do
  [ -n "${P1_BASE:-}" ] && shared4 "shared4-base-$round" "$out/kpl-base"
  shared4 "shared4-this-$round" "$kpl"
done
"$kpl" bench --payload json-logs --record-size 200-300 --seed 9 --print-records 20000 > "$out/dict-samples.txt"
"$kpl" dict train "$out/dict-samples.txt" -o "$out/json-logs.dict" --report "$out/dict.json" 2>"$out/dict.txt"
# One record per Kinesis record: 4 shards take 4 000 a second, so 5 s of them are buffered, not
# the default 200 000 (50 s, past the record TTL).
small="--shards 4 --payload json-logs --record-size 200-300 --no-aggregation --compression zstd --max-outstanding-records 20000"
run p6-small-zstd $small
run p6-small-dict $small --zstd-dict "$out/json-logs.dict"
scripts/setup-node.sh
scripts/setup-aiokpl.sh
.venv-bench/bin/python scripts/p3.py --records "${P3_RECORDS:-40000}" --kpl-seconds "$secs" \
  --kpl "$kpl" --out "$out/p3.json" 2>"$out/p3.txt" || { cat "$out/p3.txt" >&2; exit 1; }
.venv-bench/bin/python scripts/p3_put.py --seconds "${P3_PUT_SECONDS:-15}" --kpl "$kpl" \
  --out "$out/p3_put.json" >"$out/p3_put.md" 2>"$out/p3_put.txt" || { cat "$out/p3_put.txt" >&2; exit 1; }
cp BENCHMARKS.md "$out/BENCHMARKS.previous.md"
python3 scripts/benchmarks_md.py "$out" "$secs" "${P2_SECONDS:-60}" "$out/BENCHMARKS.previous.md" > "$out/BENCHMARKS.md"
mv "$out/BENCHMARKS.md" BENCHMARKS.md
echo "BENCHMARKS.md written"
