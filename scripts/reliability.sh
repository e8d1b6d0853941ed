#!/usr/bin/env bash
# Regenerates RELIABILITY.md: runs the fault matrix (tests/fault_matrix.rs) against kpl sim and
# writes its table with the machine, date and commit, then runs the seeded simulation explorer
# (tests/simulation.rs) over many seeds in release and writes its figures.
#
#   scripts/reliability.sh          both
#   scripts/reliability.sh sim      only the explorer's section (the fault matrix is kept)
#
# Explorer knobs: KPL_SIM_SEEDS (default 100000), KPL_SIM_SEED_START (default 0), KPL_SIM_CHUNK
# (seeds per test run, default 10000), KPL_SIM_FAULTS (families; default: all of them),
# KPL_SIM_UNTIL (a Unix time: start no chunk after it; the figures count the seeds that ran),
# KPL_SIM_CARGO_ARGS (extra cargo arguments, e.g. --all-features to reuse such a build).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
sim_marker='## The seeded simulator'

matrix() {
  table=$(mktemp)
  KPL_RELIABILITY_OUT="$table" cargo test --release --test fault_matrix -- --nocapture >/dev/null
  cat <<HEAD
# Reliability: the fault matrix

Every fault \`kpl sim\` injects, pushed through the producer (2 000 records of 100 bytes, 200 keys,
4 shards with limits on, sent in 40 waves 50 ms apart; record_max_buffered_time 20 ms,
request_timeout 500 ms), then the stream is read back. Checked by \`tests/fault_matrix.rs\`
(part of \`scripts/test.sh\`): every future resolved; every record reported put is in the stream
(lost must be 0); every record not in the stream was reported failed with a reason; fatal errors
surface within a second; each fault really fired (the simulator's counters); duplicates appear
only where a stored call's answer was lost. The rows whose faults can duplicate (lost answers,
resets, the outage, split, merge) run with dedup ids on: a \`Deduper\` over everything read back
(also copies the KCL would drop) leaves exactly one copy of every acknowledged record. The last
row puts ~10 MiB through one limited shard.

- machine: $(nproc) cores, $(uname -m); date: $(date -u +%Y-%m-%d); commit: $(git rev-parse --short HEAD)
- regenerate: \`scripts/reliability.sh\`

HEAD
  cat "$table"
  cat <<'TAIL'

Columns: *duplicates* are extra copies the KCL would deliver (a lost answer to a stored call is
resent: at-least-once; see the README on delivery semantics); *duplicates dropped by dedup
ids* counts every extra copy a reader saw, including the ones only a reader without the KCL's
range check sees (after a split) — `-`: dedup ids off in that row; *Kinesis records put* exceeds the no-fault
count after a split because aggregates that landed across the new boundary are re-aggregated
(the stored copy is one the KCL drops); *entries passed to the store* counts what the fault
layer let through (failed entries are removed before the store sees them).
TAIL
  rm -f "$table"
}

simulator() {
  local total=${KPL_SIM_SEEDS:-100000} first=${KPL_SIM_SEED_START:-0} chunk=${KPL_SIM_CHUNK:-10000}
  local dir; dir=$(mktemp -d)
  cargo test --release ${KPL_SIM_CARGO_ARGS:-} --test simulation --no-run >/dev/null 2>&1
  local started; started=$(date +%s)
  local start=$first end=$((first + total))
  local until=${KPL_SIM_UNTIL:-0}
  while [ "$start" -lt "$end" ]; do
    if [ "$until" -gt 0 ] && [ "$(date +%s)" -ge "$until" ]; then
      echo "KPL_SIM_UNTIL reached: seeds $first..$start ran, $((end - start)) not started" >&2
      break
    fi
    local n=$((end - start < chunk ? end - start : chunk))
    # A failing seed fails the test: its seeds are in the summary, so go on.
    KPL_SIM_SEED_START=$start KPL_SIM_SEEDS=$n KPL_SIM_SUMMARY="$dir/$start.txt" \
      cargo test --release ${KPL_SIM_CARGO_ARGS:-} --test simulation seeds_keep_every_invariant >"$dir/$start.log" 2>&1 || true
    [ -s "$dir/$start.txt" ] || { echo "seeds $start..$((start + n)): no summary, see $dir/$start.log" >&2; exit 1; }
    start=$((start + n))
  done
  local took=$(( $(date +%s) - started ))
  cat "$dir"/*.txt | awk -v took="$took" -v first="$first" -v total="$total" \
    -v machine="$(nproc) cores, $(uname -m)" -v date="$(date -u +%Y-%m-%d)" \
    -v commit="$(git rev-parse --short HEAD)" -v faults="${KPL_SIM_FAULTS:-all (the default)}" '
    $1 == "failing_seed" { $1 = ""; fails[++nf] = $0; next }
    $1 ~ /^family\./ { sub(/^family\./, "", $1); fam[$1] += $2; next }
    { sum[$1] += $2 }
    END {
      printf "## The seeded simulator\n\n"
      printf "`tests/simulation.rs` draws, per seed, a configuration (aggregation on/off, strict ordering,\n"
      printf "dedup ids, aggregate and call sizes, buffered time, TTL, timeout, attempts, backoff, buffer\n"
      printf "limits, concurrency, zstd), a workload (1-250 records, 1-24 keys, some with explicit hash\n"
      printf "keys, sizes up to the record limit, send / send_batch / try_send, bursts, pauses, flushes)\n"
      printf "and a fault schedule over `MemoryKinesis` on tokio'"'"'s paused clock, then checks: every\n"
      printf "accepted record resolved exactly once and none `Lost`; `flush` / `shutdown` returned within\n"
      printf "TTL + 2 x request timeout + backoff cap + buffered time + 2 s of virtual time; every receipt\n"
      printf "names a stored record holding exactly that record, on a shard whose range holds its hash\n"
      printf "key; a copy outside its shard'"'"'s range was re-sent or the record failed; a failed record\n"
      printf "that is in the store says \"may have been stored\", never \"not stored\"; failures are\n"
      printf "fatal only for fatal codes; every failure hands its record back; with dedup ids a\n"
      printf "`Deduper` over the store leaves the acknowledged records (plus failures that say they may\n"
      printf "be stored) and no id twice; with strict ordering (and without, when no fault fired) each\n"
      printf "key'"'"'s stored order and receipt order is its send order minus failed records; after\n"
      printf "everything resolved, exactly `max_outstanding_records` records and\n"
      printf "`max_outstanding_bytes` bytes fit the buffer, not one more. Every 16th seed runs twice and\n"
      printf "must give the same trace (every call, plan, reshard, store entry and outcome).\n\n"
      printf "- machine: %s; date: %s; commit: %s; release build\n", machine, date, commit
      printf "- seeds %d..%d (%d), fault families: %s\n", first, first + sum["seeds"], sum["seeds"], faults
      printf "- wall time: %d s (%.0f seeds/s); virtual time simulated: %.0f s\n", took, sum["seeds"] / (took > 0 ? took : 1), sum["virtual_s"]
      printf "- %d records accepted, %d PutRecords calls, %d of them with a fault; %d seeds had a\n", sum["records"], sum["calls"], sum["faulty_calls"], sum["maybe_stored_seeds"]
      printf "  failed record that a call stored all the same\n"
      printf "- seeds per family (each seed turns on each enabled family with probability 0.4):"
      for (f in fam) printf " %s %d;", f, fam[f]
      printf "\n- failing seeds: %d\n", sum["failing"]
      for (i = 1; i <= nf && i <= 20; i++) printf "  -%s\n", fails[i]
      printf "\nReplay a seed: `KPL_SIM_SEED=N cargo test --test simulation replay -- --nocapture`.\n"
      printf "Regenerate this section only: `scripts/reliability.sh sim`.\n"
    }'
  rm -rf "$dir"
}

case "$mode" in
  all)
    out=$(mktemp)
    { matrix; echo; simulator; } > "$out"
    mv "$out" RELIABILITY.md
    ;;
  sim)
    section=$(mktemp)
    simulator > "$section"
    kept=$(mktemp)
    awk -v marker="$sim_marker" '$0 == marker { exit } { print }' RELIABILITY.md > "$kept"
    # Drop the blank lines the section leaves before itself.
    { sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$kept"; echo; cat "$section"; } > RELIABILITY.md
    rm -f "$section" "$kept"
    ;;
  *) echo "usage: $0 [all|sim]" >&2; exit 2 ;;
esac
echo "RELIABILITY.md written"
