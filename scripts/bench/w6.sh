#!/usr/bin/env bash
# W6: 8 partitions, 4 producers, 4 consumers in one group, acks=all, DURATION seconds
# (default 300): the produce and consume rates and the broker's RSS every 10 s, then a
# summary. The topic keeps 1 GiB per partition (retention.bytes), so the disk use is
# bounded while the rates are sustained. Run from the repository root after
# `cargo build --release -p fjord-broker -p fjord-tools`.
source "$(dirname "$0")/common.sh"
DURATION=${DURATION:-300}
start_broker --log-retention-check-interval-ms 10000
"$BIN/fjord" topic create w6 --partitions 8 --config retention.bytes=1073741824 \
    --config segment.bytes=134217728 >/dev/null
for _ in 1 2 3 4; do
    "$BIN/fjord" perf consume --topic w6 --group w6 --num-records 1000000000000 \
        --timeout-ms 600000 >/dev/null 2>>"$DIR/consumers.log" &
    CHILDREN+=($!)
done
"$BIN/fjord" perf produce --topic w6 --producers 4 --acks all --record-size 1024 \
    --num-records 1000000000000 >/dev/null 2>>"$DIR/producer.log" &
CHILDREN+=($!)
produced() { metric '^fjord_produce_bytes_total\{topic="w6"\}'; }
lag() { metric '^fjord_consumer_group_lag_records\{group="w6"'; }
fetched() { metric '^fjord_fetch_bytes_total\{topic="w6"\}'; }
echo "t_s produce_MB_s consume_MB_s group_lag_records broker_rss_MiB"
last_p=$(produced); last_f=$(fetched); t=0
sum_p=0; sum_f=0; n=0; rss_min=; rss_max=0
while [ "$t" -lt "$DURATION" ]; do
    sleep 10; t=$((t + 10))
    p=$(produced); f=$(fetched); rss=$(rss_mib)
    p_rate=$(awk -v a="$p" -v b="$last_p" 'BEGIN { printf "%.1f", (a - b) / 10 / 1e6 }')
    f_rate=$(awk -v a="$f" -v b="$last_f" 'BEGIN { printf "%.1f", (a - b) / 10 / 1e6 }')
    echo "$t $p_rate $f_rate $(lag) $rss"
    last_p=$p; last_f=$f
    if [ "$t" -gt 60 ]; then  # after warm-up
        sum_p=$(awk -v a="$sum_p" -v b="$p_rate" 'BEGIN { print a + b }')
        sum_f=$(awk -v a="$sum_f" -v b="$f_rate" 'BEGIN { print a + b }')
        n=$((n + 1))
        rss_min=$(awk -v a="${rss_min:-$rss}" -v b="$rss" 'BEGIN { print (b < a) ? b : a }')
        rss_max=$(awk -v a="$rss_max" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
    fi
done
if [ "$n" -gt 0 ]; then
    awk -v p="$sum_p" -v f="$sum_f" -v n="$n" -v lo="$rss_min" -v hi="$rss_max" 'BEGIN {
        printf "after warm-up (t > 60 s): produce %.1f MB/s, consume %.1f MB/s, ", p / n, f / n
        printf "broker RSS %.1f-%.1f MiB\n", lo, hi }'
fi
