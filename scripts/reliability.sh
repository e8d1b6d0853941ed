#!/usr/bin/env bash
# Regenerates RELIABILITY.md: runs the fault matrix (tests/fault_matrix.rs) against kpl sim and
# writes its table with the machine, date and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(mktemp)
KPL_RELIABILITY_OUT="$table" cargo test --release --test fault_matrix -- --nocapture >/dev/null
{
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
} > RELIABILITY.md
rm -f "$table"
echo "RELIABILITY.md written"
