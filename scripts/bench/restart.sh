#!/usr/bin/env bash
# Restart after kill -9 with GIB GiB on disk (default 10) and a small unflushed tail:
# the time from starting the broker to /health answering and to a fetch of the tail
# being served. Run from the repository root after
# `cargo build --release -p fjord-broker -p fjord-tools`.
source "$(dirname "$0")/common.sh"
GIB=${GIB:-10}
start_broker
records=$((GIB * 1024 * 1024 + 1024))   # 1 KiB records, a little over GIB GiB
"$BIN/fjord" perf produce --topic big --partitions 4 --record-size 1024 --acks 1 \
    --num-records "$records" --batch-bytes 262144
# The tail: acks=1, so not fsync'd before the kill.
seq 1 1000 | "$BIN/fjord" produce big --acks 1
du -sh "$DIR/data"
kill -9 "$BROKER"; wait "$BROKER" 2>/dev/null || true
: >"$DIR/broker.log"
start=$(date +%s.%N)
start_broker
healthy=$(date +%s.%N)
"$BIN/fjord" consume big --partition 0 --offset 0 --max-messages 1 >/dev/null
"$BIN/fjord" offsets big
served=$(date +%s.%N)
awk -v s="$start" -v h="$healthy" -v f="$served" 'BEGIN {
    printf "restart after kill -9: /health after %.2f s, first fetch served after %.2f s\n", h - s, f - s }'
echo "the restart's log:"
cut -c1-220 "$DIR/broker.log" | head -20
