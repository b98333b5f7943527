#!/usr/bin/env bash
# The broker's RSS with no partitions, with 1,000 idle ones (100 topics of 10), and
# after a restart that opens those 1,000 from disk. Run from the repository root after
# `cargo build --release -p fjord-broker -p fjord-tools`.
source "$(dirname "$0")/common.sh"
start_broker
sleep 1
empty=$(rss_mib)
for i in $(seq 1 100); do
    "$BIN/fjord" topic create "idle-$i" --partitions 10 >/dev/null
done
sleep 1
created=$(rss_mib)
kill "$BROKER"; wait "$BROKER" 2>/dev/null || true
start_broker
sleep 1
reopened=$(rss_mib)
echo "broker RSS: ${empty} MiB empty (16 __consumer_offsets partitions), ${created} MiB with 1,000 idle partitions created, ${reopened} MiB after a restart opened them"
awk -v a="$empty" -v b="$reopened" 'BEGIN { printf "%.1f KiB per idle partition (reopened)\n", (b - a) * 1024 / 1000 }'
